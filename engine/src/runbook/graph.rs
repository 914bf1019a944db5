//! The `needs` graph of a runbook's steps: the order they can run in, and which steps each
//! step needs, directly or through others.
//!
//! Both take time in proportion to the steps and their `needs` (the ancestry keeps one bit
//! per pair of steps), so a runbook of thousands of steps validates in milliseconds. Only
//! steps in or behind a cycle, which validation reports as an error, are walked one by one.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use fixedbitset::FixedBitSet;

/// Steps as nodes, in the order given (a repeated id belongs to its first step), and each
/// step's `needs` among them as edges. Needs that name no step are left out.
pub(crate) struct Needs<'a> {
    ids: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
    /// For each step, the steps it needs, without repeats.
    edges: Vec<Vec<usize>>,
    /// The steps in a topological order (see [`Needs::order`]); the first `settled` of
    /// them are in no cycle and behind none.
    sorted: Vec<usize>,
    settled: usize,
}

impl<'a> Needs<'a> {
    pub(crate) fn new(steps: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut ids = Vec::new();
        let mut index = HashMap::new();
        let mut needs = Vec::new();
        for (id, n) in steps {
            index.entry(id).or_insert_with(|| {
                ids.push(id);
                needs.push(n);
                ids.len() - 1
            });
        }
        let edges: Vec<Vec<usize>> = needs
            .iter()
            .map(|n| {
                let mut e: Vec<usize> = n
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect();
                e.sort_unstable();
                e.dedup();
                e
            })
            .collect();
        let (sorted, settled) = sort(&edges);
        Needs {
            ids,
            index,
            edges,
            sorted,
            settled,
        }
    }

    /// The step ids in a topological order: every step after the steps it needs, choosing
    /// among those ready the first in the order given (Kahn's algorithm). Steps in or behind
    /// a cycle come last, in the order given.
    pub(crate) fn order(&self) -> Vec<&'a str> {
        self.sorted.iter().map(|&s| self.ids[s]).collect()
    }

    /// The steps in or behind a cycle (needing, directly or through others, a step of one).
    /// Every step on a cycle is among them.
    pub(crate) fn unsettled(&self) -> BTreeSet<&'a str> {
        self.sorted[self.settled..]
            .iter()
            .map(|&s| self.ids[s])
            .collect()
    }

    /// For every step, the steps it needs directly or through others (never itself).
    pub(crate) fn ancestry(&self) -> Ancestry {
        let n = self.ids.len();
        let (order, settled) = (&self.sorted, self.settled);
        let mut of = vec![FixedBitSet::new(); n];
        for &s in &order[..settled] {
            let mut set = FixedBitSet::with_capacity(n);
            for &t in &self.edges[s] {
                set.union_with(&of[t]);
                set.insert(t);
            }
            of[s] = set;
        }
        // In or behind a cycle, the needs already seen cannot be trusted to be complete:
        // walk the graph from the step.
        for &s in &order[settled..] {
            let mut set = FixedBitSet::with_capacity(n);
            let mut todo = vec![s];
            while let Some(x) = todo.pop() {
                for &t in &self.edges[x] {
                    if t != s && !set.put(t) {
                        todo.push(t);
                    }
                }
            }
            of[s] = set;
        }
        Ancestry {
            ids: self.ids.iter().map(|s| s.to_string()).collect(),
            index: self
                .index
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            of,
        }
    }
}

/// Kahn's algorithm over `edges` (each node's needs), taking among the ready nodes the
/// lowest number: the order, and how many of its nodes come before those in or behind a
/// cycle (which follow in number order).
fn sort(edges: &[Vec<usize>]) -> (Vec<usize>, usize) {
    let n = edges.len();
    let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut needed_by = vec![Vec::new(); n];
    for (s, needs) in edges.iter().enumerate() {
        for &t in needs {
            needed_by[t].push(s);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&s| waiting[s] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(s)) = ready.pop() {
        order.push(s);
        for &d in &needed_by[s] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    let settled = order.len();
    let mut placed = FixedBitSet::with_capacity(n);
    order.iter().for_each(|&s| placed.insert(s));
    order.extend((0..n).filter(|&s| !placed.contains(s)));
    (order, settled)
}

/// Which steps each step needs, directly or through others.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ancestry {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    of: Vec<FixedBitSet>,
}

impl Ancestry {
    /// The ancestors of step `id`; none when it is no step.
    pub(crate) fn of(&self, id: &str) -> Ancestors<'_> {
        Ancestors {
            within: self.index.get(id).map(|&s| (self, s)),
        }
    }
}

/// The steps one step needs, directly or through others.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ancestors<'a> {
    within: Option<(&'a Ancestry, usize)>,
}

impl Ancestors<'_> {
    /// No steps at all (for what is rendered before any step runs).
    pub(crate) fn none() -> Self {
        Ancestors { within: None }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.within
            .is_some_and(|(a, s)| a.index.get(id).is_some_and(|&t| a.of[s].contains(t)))
    }

    /// Their ids, sorted.
    pub(crate) fn ids(&self) -> BTreeSet<String> {
        self.within
            .map(|(a, s)| a.of[s].ones().map(|t| a.ids[t].clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(steps: &[(&'static str, &[&str])]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let ids = steps.iter().map(|(id, _)| *id).collect();
        let needs = steps
            .iter()
            .map(|(_, n)| n.iter().map(|s| s.to_string()).collect())
            .collect();
        (ids, needs)
    }

    fn needs<'a>(ids: &[&'a str], needs: &'a [Vec<String>]) -> Needs<'a> {
        Needs::new(ids.iter().copied().zip(needs.iter().map(Vec::as_slice)))
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn order_takes_the_first_ready_step_in_the_order_given() {
        let (ids, n) = graph(&[
            ("d", &["b", "c"]),
            ("c", &[]),
            ("b", &["a"]),
            ("a", &[]),
            ("e", &["zzz-unknown"]),
        ]);
        let g = needs(&ids, &n);
        assert_eq!(g.order(), ["c", "a", "b", "d", "e"]);
        assert!(g.unsettled().is_empty());
    }

    #[test]
    fn steps_in_or_behind_a_cycle_come_last_in_the_order_given() {
        let (ids, n) = graph(&[
            ("behind", &["x"]),
            ("x", &["y"]),
            ("free", &[]),
            ("y", &["x"]),
            ("selfish", &["selfish"]),
        ]);
        let g = needs(&ids, &n);
        assert_eq!(g.order(), ["free", "behind", "x", "y", "selfish"]);
        let unsettled: Vec<&str> = g.unsettled().into_iter().collect();
        assert_eq!(unsettled, ["behind", "selfish", "x", "y"]);
    }

    #[test]
    fn ancestry_follows_needs_through_others_and_never_holds_the_step_itself() {
        let (ids, n) = graph(&[
            ("a", &[]),
            ("b", &["a", "a"]),
            ("c", &["b"]),
            ("d", &["a"]),
            ("e", &["c", "d", "nowhere"]),
            ("x", &["y", "a"]),
            ("y", &["x"]),
            ("z", &["y"]),
            ("me", &["me"]),
        ]);
        let anc = needs(&ids, &n).ancestry();
        assert_eq!(anc.of("a").ids(), set(&[]));
        assert_eq!(anc.of("c").ids(), set(&["a", "b"]));
        assert_eq!(anc.of("e").ids(), set(&["a", "b", "c", "d"]));
        assert_eq!(anc.of("x").ids(), set(&["a", "y"]));
        assert_eq!(anc.of("z").ids(), set(&["a", "x", "y"]));
        assert_eq!(anc.of("me").ids(), set(&[]));
        assert!(anc.of("e").contains("b"));
        assert!(!anc.of("b").contains("e"));
        assert!(!anc.of("e").contains("nowhere"));
        assert!(!anc.of("nowhere").contains("a"));
        assert!(!Ancestors::none().contains("a"));
    }

    #[test]
    fn a_repeated_id_belongs_to_its_first_step() {
        let (ids, n) = graph(&[("a", &[]), ("b", &["a"]), ("b", &[]), ("c", &["b"])]);
        let g = needs(&ids, &n);
        assert_eq!(g.order(), ["a", "b", "c"]);
        assert_eq!(g.ancestry().of("c").ids(), set(&["a", "b"]));
    }

    #[test]
    fn a_long_chain_is_ordered_and_traced() {
        let n = 5_000;
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let needs_of: Vec<Vec<String>> = (0..n)
            .map(|i| {
                if i == 0 {
                    vec![]
                } else {
                    vec![ids[i - 1].clone()]
                }
            })
            .collect();
        let g = Needs::new(
            ids.iter()
                .map(String::as_str)
                .zip(needs_of.iter().map(Vec::as_slice)),
        );
        let order = g.order();
        assert_eq!(order.len(), n);
        assert!(order.iter().zip(&ids).all(|(a, b)| *a == b.as_str()));
        let anc = g.ancestry();
        assert!(anc.of("s4999").contains("s0"));
        assert!(!anc.of("s0").contains("s4999"));
        assert_eq!(anc.of("s100").ids().len(), 100);
    }
}
