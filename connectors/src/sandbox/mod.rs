//! A local, stateful imitation of vendor APIs, for `cordon demo`, runbook rehearsal and
//! tests. It binds to loopback only and keeps everything in memory.
//!
//! Today it serves a small generic directory and device API under `/demo/` that the
//! demonstration runbook drives through the `http` connector; the vendor imitations
//! (Okta, Graph, Google, SCIM, Jamf, …) join it as their connectors land.

pub mod defender;
pub mod elasticsearch;
pub mod google;
pub mod intune;
pub mod jamf;
pub mod kandji;
pub mod okta;
pub mod splunk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod crowdstrike;
pub mod entra;

/// The addresses the seeded people use across every imitated log, so that each vendor's
/// `ip_addresses` tells the same story. Documentation ranges only (RFC 5737, RFC 3849):
/// none of them belongs to anyone.
pub mod addresses {
    /// A US cable-broadband address: the laptop farm where the company laptop sits.
    pub const US_RESIDENTIAL: &str = "198.51.100.23";
    /// A hosting provider's address that a commercial VPN (Astrill-like) uses as its exit.
    pub const VPN_EXIT: &str = "203.0.113.45";
    /// An address abroad, the workers' own connection (China, near the border).
    pub const FOREIGN: &str = "192.0.2.14";
    /// The same provider abroad, over IPv6.
    pub const FOREIGN_V6: &str = "2001:db8:4a3::15";
    /// The company office, where the analyst works.
    pub const OFFICE: &str = "198.51.100.7";

    /// Where a geolocation service would place each address: (ISO code, country name,
    /// city), as Entra/Google (codes) and Okta (names) report them.
    pub fn geo(ip: &str) -> Option<(&'static str, &'static str, &'static str)> {
        match ip {
            US_RESIDENTIAL => Some(("US", "United States", "Phoenix")),
            VPN_EXIT => Some(("US", "United States", "Ashburn")),
            FOREIGN | FOREIGN_V6 => Some(("CN", "China", "Shenyang")),
            OFFICE => Some(("US", "United States", "Chicago")),
            _ => None,
        }
    }
}
pub mod fleet;
pub mod scim;
pub mod slack;

/// One imitated user account.
#[derive(Debug, Clone)]
struct User {
    id: String,
    email: String,
    name: String,
    status: &'static str,
}

/// One imitated managed device.
#[derive(Debug, Clone)]
struct Device {
    id: String,
    serial: String,
    owner: String,
    contained: bool,
}

#[derive(Debug, Default)]
struct World {
    users: BTreeMap<String, User>,
    devices: BTreeMap<String, Device>,
    /// Every mutating request, for tests and the demo's summary.
    calls: Vec<String>,
}

/// Shared sandbox state: the generic demo API and every imitated vendor.
#[derive(Clone)]
pub struct Sandbox {
    world: Arc<Mutex<World>>,
    pub okta: okta::OktaSandbox,
    pub entra: entra::EntraSandbox,
    pub google: google::GoogleSandbox,
    pub scim: scim::ScimState,
    pub fleet: fleet::FleetSandbox,
    pub crowdstrike: crowdstrike::CrowdStrikeSandbox,
    pub jamf: jamf::JamfSandbox,
    pub kandji: kandji::KandjiSandbox,
    pub intune: intune::IntuneSandbox,
    pub defender: defender::DefenderSandbox,
    pub slack: slack::SlackSandbox,
    pub splunk: splunk::SplunkSandbox,
    pub elasticsearch: elasticsearch::ElasticsearchSandbox,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            world: Arc::default(),
            okta: okta::OktaSandbox::seeded(),
            entra: entra::EntraSandbox::seeded(),
            google: google::GoogleSandbox::seeded(),
            scim: scim::ScimState::default(),
            fleet: fleet::FleetSandbox::seeded(),
            crowdstrike: crowdstrike::CrowdStrikeSandbox::seeded(),
            jamf: jamf::JamfSandbox::seeded(),
            kandji: kandji::KandjiSandbox::seeded(),
            intune: intune::IntuneSandbox::seeded(),
            defender: defender::DefenderSandbox::seeded(),
            slack: slack::SlackSandbox::default(),
            splunk: splunk::SplunkSandbox::seeded(),
            elasticsearch: elasticsearch::ElasticsearchSandbox::seeded(),
        }
    }
}

/// A running sandbox server.
pub struct SandboxServer {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    handle: JoinHandle<()>,
}

impl SandboxServer {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Sandbox {
    /// A sandbox seeded with the demonstration's people and devices.
    pub fn seeded() -> Sandbox {
        let s = Sandbox::default();
        if let Ok(mut w) = s.world.lock() {
            for (id, email, name) in [
                ("00u1demo0suspect", "j.smith@example.com", "John Smith"),
                ("00u2demo0analyst", "dana@example.com", "Dana Analyst"),
            ] {
                w.users.insert(
                    email.to_string(),
                    User {
                        id: id.into(),
                        email: email.into(),
                        name: name.into(),
                        status: "ACTIVE",
                    },
                );
            }
            for (id, serial, owner) in [
                ("dev-001", "C02DEMO0001", "j.smith@example.com"),
                ("dev-002", "C02DEMO0002", "j.smith@example.com"),
            ] {
                w.devices.insert(
                    serial.to_string(),
                    Device {
                        id: id.into(),
                        serial: serial.into(),
                        owner: owner.into(),
                        contained: false,
                    },
                );
            }
        }
        s
    }

    /// Mutating calls received so far, as `METHOD path` lines.
    pub fn calls(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.calls.clone())
            .unwrap_or_default()
    }

    /// Serve on an ephemeral loopback port.
    pub async fn serve(self) -> std::io::Result<SandboxServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let handle = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "sandbox server stopped");
            }
        });
        Ok(SandboxServer {
            addr,
            sandbox: self,
            handle,
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/demo/users/{user}", get(get_user))
            .route("/demo/users/{user}/suspend", post(suspend))
            .route("/demo/users/{user}/unsuspend", post(unsuspend))
            .route("/demo/users/{user}/logs", get(logs))
            .route("/demo/devices/{serial}", get(get_device))
            .route("/demo/devices/{serial}/contain", post(contain))
            .route("/demo/devices/{serial}/release", post(release))
            .with_state(self.clone())
            .nest("/scim", scim::router(self.scim.clone()))
            .nest("/entra", entra::router(self.entra.clone()))
            .nest("/okta", okta::router(self.okta.clone()))
            .nest("/google", google::router(self.google.clone()))
            .nest("/fleet", fleet::router(self.fleet.clone()))
            .nest(
                "/crowdstrike",
                crowdstrike::router(self.crowdstrike.clone()),
            )
            .nest("/jamf", jamf::router(self.jamf.clone()))
            .nest("/kandji", kandji::router(self.kandji.clone()))
            .nest("/intune", intune::router(self.intune.clone()))
            .nest("/defender", defender::router(self.defender.clone()))
            .nest("/slack", slack::router(self.slack.clone()))
            .nest("/splunk", splunk::router(self.splunk.clone()))
            .nest(
                "/elasticsearch",
                elasticsearch::router(self.elasticsearch.clone()),
            )
    }

    /// Connector instances configured against this sandbox at `base_url`, with their
    /// secrets written as files under `secrets_dir` (so the configuration holds only
    /// `{file: …}` references, as a real one would).
    pub fn connector_config(
        base_url: &str,
        secrets_dir: &std::path::Path,
    ) -> std::io::Result<BTreeMap<String, Value>> {
        std::fs::create_dir_all(secrets_dir)?;
        let write = |name: &str, value: &str| -> std::io::Result<String> {
            let p = secrets_dir.join(name);
            std::fs::write(&p, value)?;
            Ok(p.display().to_string())
        };
        let okta_token = write("okta-token", okta::SANDBOX_TOKEN)?;
        let entra_secret = write("entra-secret", entra::SANDBOX_CLIENT_SECRET)?;
        let google_key = write(
            "google-key.json",
            &google::sandbox_service_account_key(&format!("{base_url}/google/token")),
        )?;
        let scim_token = write("scim-token", scim::SANDBOX_TOKEN)?;
        let fleet_token = write("fleet-token", fleet::SANDBOX_TOKEN)?;
        let cs_secret = write("crowdstrike-secret", crowdstrike::SANDBOX_CLIENT_SECRET)?;
        let jamf_secret = write("jamf-client-secret", jamf::SANDBOX_CLIENT_SECRET)?;
        let kandji_token = write("kandji-token", kandji::SANDBOX_TOKEN)?;
        let intune_secret = write("intune-secret", intune::SANDBOX_CLIENT_SECRET)?;
        let defender_secret = write("defender-secret", defender::SANDBOX_CLIENT_SECRET)?;
        let slack_hook = write(
            "slack-webhook",
            &format!("{base_url}/slack{}", slack::SANDBOX_WEBHOOK_PATH),
        )?;
        let splunk_token = write("splunk-token", splunk::SANDBOX_TOKEN)?;
        let es_key = write("elasticsearch-api-key", elasticsearch::SANDBOX_API_KEY)?;
        let mut m = BTreeMap::new();
        m.insert(
            "okta-sandbox".to_string(),
            json!({"type": "okta", "base_url": format!("{base_url}/okta"), "token": {"file": okta_token}}),
        );
        m.insert(
            "entra-sandbox".to_string(),
            json!({"type": "entra", "tenant_id": entra::SANDBOX_TENANT_ID, "client_id": entra::SANDBOX_CLIENT_ID,
                   "client_secret": {"file": entra_secret}, "base_url": format!("{base_url}/entra"),
                   "token_url": format!("{base_url}/entra/login/{{tenant_id}}/oauth2/v2.0/token")}),
        );
        m.insert(
            "google-sandbox".to_string(),
            json!({"type": "google", "service_account_key": {"file": google_key},
                   "subject": google::SANDBOX_SUBJECT, "base_url": format!("{base_url}/google"),
                   "token_url": format!("{base_url}/google/token")}),
        );
        m.insert(
            "scim-sandbox".to_string(),
            json!({"type": "scim", "base_url": format!("{base_url}/scim"), "token": {"file": scim_token}}),
        );
        m.insert(
            "fleet-sandbox".to_string(),
            json!({"type": "fleet", "base_url": format!("{base_url}/fleet"), "token": {"file": fleet_token}}),
        );
        m.insert(
            "crowdstrike-sandbox".to_string(),
            json!({"type": "crowdstrike", "base_url": format!("{base_url}/crowdstrike"),
                   "client_id": crowdstrike::SANDBOX_CLIENT_ID, "client_secret": {"file": cs_secret}}),
        );
        m.insert(
            "jamf-sandbox".to_string(),
            json!({"type": "jamf", "base_url": format!("{base_url}/jamf"), "client_id": jamf::SANDBOX_CLIENT_ID,
                   "client_secret": {"file": jamf_secret}}),
        );
        m.insert(
            "kandji-sandbox".to_string(),
            json!({"type": "kandji", "base_url": format!("{base_url}/kandji"), "token": {"file": kandji_token}}),
        );
        m.insert(
            "intune-sandbox".to_string(),
            json!({"type": "intune", "tenant_id": intune::SANDBOX_TENANT_ID, "client_id": intune::SANDBOX_CLIENT_ID,
                   "client_secret": {"file": intune_secret}, "base_url": format!("{base_url}/intune"),
                   "token_url": format!("{base_url}/intune/login/{{tenant_id}}/oauth2/v2.0/token")}),
        );
        m.insert(
            "defender-sandbox".to_string(),
            json!({"type": "defender", "tenant_id": defender::SANDBOX_TENANT_ID, "client_id": defender::SANDBOX_CLIENT_ID,
                   "client_secret": {"file": defender_secret}, "base_url": format!("{base_url}/defender"),
                   "token_url": format!("{base_url}/defender/login/{{tenant_id}}/oauth2/v2.0/token")}),
        );
        m.insert(
            "slack-sandbox".to_string(),
            json!({"type": "slack", "webhook_url": {"file": slack_hook}}),
        );
        m.insert(
            "splunk-sandbox".to_string(),
            json!({"type": "splunk", "base_url": format!("{base_url}/splunk"), "token": {"file": splunk_token}}),
        );
        m.insert(
            "elasticsearch-sandbox".to_string(),
            json!({"type": "elasticsearch", "base_url": format!("{base_url}/elasticsearch"), "api_key": {"file": es_key}}),
        );
        Ok(m)
    }

    fn record(&self, line: String) {
        if let Ok(mut w) = self.world.lock() {
            w.calls.push(line);
        }
    }
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("{what} not found")})),
    )
        .into_response()
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "email": u.email, "name": u.name, "status": u.status})
}

fn find<'a>(w: &'a mut World, key: &str) -> Option<&'a mut User> {
    let key = key.to_ascii_lowercase();
    w.users
        .values_mut()
        .find(|u| u.email.eq_ignore_ascii_case(&key) || u.id == key)
}

async fn get_user(State(s): State<Sandbox>, Path(user): Path<String>) -> Response {
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match find(&mut w, &user) {
        Some(u) => Json(user_json(u)).into_response(),
        None => not_found("user"),
    }
}

async fn set_status(s: Sandbox, user: String, to: &'static str, verb: &str) -> Response {
    s.record(format!("POST /demo/users/{user}/{verb}"));
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match find(&mut w, &user) {
        Some(u) => {
            let already = u.status == to;
            u.status = to;
            Json(json!({"target": u.id, "already": already, "status": to})).into_response()
        }
        None => not_found("user"),
    }
}

async fn suspend(State(s): State<Sandbox>, Path(user): Path<String>) -> Response {
    set_status(s, user, "SUSPENDED", "suspend").await
}

async fn unsuspend(State(s): State<Sandbox>, Path(user): Path<String>) -> Response {
    set_status(s, user, "ACTIVE", "unsuspend").await
}

#[derive(Deserialize)]
struct LogQuery {
    since: Option<String>,
}

async fn logs(
    State(s): State<Sandbox>,
    Path(user): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let email = {
        let Ok(mut w) = s.world.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        match find(&mut w, &user) {
            Some(u) => u.email.clone(),
            None => return not_found("user"),
        }
    };
    let since = q.since.unwrap_or_else(|| "2026-01-01T00:00:00Z".into());
    let events = [
        ("user.session.start", addresses::VPN_EXIT, "AnyDesk/8.0"),
        (
            "user.authentication.sso",
            addresses::US_RESIDENTIAL,
            "Chrome/131",
        ),
        ("app.github.clone", addresses::FOREIGN, "git/2.43"),
    ];
    let body: String = events
        .iter()
        .enumerate()
        .map(|(i, (ev, ip, ua))| {
            json!({"uuid": format!("evt-{i}"), "published": since, "eventType": ev,
                   "actor": {"alternateId": email}, "client": {"ipAddress": ip, "userAgent": ua}})
            .to_string()
                + "\n"
        })
        .collect();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn get_device(State(s): State<Sandbox>, Path(serial): Path<String>) -> Response {
    let Ok(w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w.devices.get(&serial) {
        Some(d) => Json(json!({"found": true, "id": d.id, "serial": d.serial, "owner": d.owner, "contained": d.contained})).into_response(),
        None => Json(json!({"found": false, "serial": serial})).into_response(),
    }
}

async fn set_contained(s: Sandbox, serial: String, to: bool, verb: &str) -> Response {
    s.record(format!("POST /demo/devices/{serial}/{verb}"));
    let Ok(mut w) = s.world.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match w.devices.get_mut(&serial) {
        Some(d) => {
            let already = d.contained == to;
            d.contained = to;
            Json(json!({"target": d.id, "already": already, "contained": to})).into_response()
        }
        None => not_found("device"),
    }
}

async fn contain(State(s): State<Sandbox>, Path(serial): Path<String>) -> Response {
    set_contained(s, serial, true, "contain").await
}

async fn release(State(s): State<Sandbox>, Path(serial): Path<String>) -> Response {
    set_contained(s, serial, false, "release").await
}
