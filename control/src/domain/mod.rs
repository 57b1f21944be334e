//! The meeting domain (filled in by the domain work in progress).
