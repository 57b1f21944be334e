//! Tests of the driver: address bookkeeping here; the whole path over a veth pair in a
//! network namespace (root only) in `veth`.

use super::*;
