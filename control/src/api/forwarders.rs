//! `fanout.control.v1.Forwarders` (filled in with the forwarder registry).
