//! Local vendor sandbox (to be written)
