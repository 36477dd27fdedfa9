//! Namespace lab (stub).
