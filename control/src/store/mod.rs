//! State storage (filled in by the store work in progress).
