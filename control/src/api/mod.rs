//! The gRPC edge (`fanout.control.v1`, control/proto/): tonic services that convert wire
//! types to domain types, authenticate, call the [`service`](crate::service) layer, and
//! map its errors to a status code in one place ([`status`]). Health checking
//! (`grpc.health.v1`) and server reflection are served next to them.
//!
//! Credentials come in the `authorization: Bearer <credential>` metadata: a participant's
//! join token, the deployment's operator token, or (forwarders) the enrolment token and
//! then the session token `Register` returned.

mod convert;
pub mod forwarders;
pub mod meetings;
pub mod metrics;
pub mod recordings;
pub mod web;

use tonic::Status;

use crate::service::meetings::{Caller, MeetingService};
use crate::service::{Code, ServiceError};

/// The wire types, for clients of the API (the forwarder, the load generator, tests). The
/// service layer never sees them.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("fanout.control.v1");

    /// The encoded descriptors of `fanout.control.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("fanout_control_v1_descriptor");
}

/// The one mapping from a use case's failure to a gRPC status. The message is the error's
/// text, which never holds a secret.
pub fn status(error: ServiceError) -> Status {
    let message = error.to_string();
    match error.code() {
        Code::InvalidArgument => Status::invalid_argument(message),
        Code::NotFound => Status::not_found(message),
        Code::PermissionDenied => Status::permission_denied(message),
        Code::FailedPrecondition => Status::failed_precondition(message),
        Code::AlreadyExists => Status::already_exists(message),
        Code::Unauthenticated => Status::unauthenticated(message),
        Code::ResourceExhausted => Status::resource_exhausted(message),
        Code::Aborted => Status::aborted(message),
        Code::Unavailable => Status::unavailable(message),
        Code::Internal => {
            tracing::error!(error = %message, "internal error");
            Status::internal(message)
        }
    }
}

/// The credential of a request: the value after `Bearer ` in `authorization`.
pub(crate) fn bearer<T>(request: &tonic::Request<T>) -> Result<&str, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no `authorization: Bearer ...` metadata"))?;
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("`authorization` is not ASCII"))?;
    crate::domain::bearer_token(text).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The wall clock, as the use cases take time.
pub(crate) fn now() -> crate::domain::UnixMillis {
    crate::domain::UnixMillis::from_system_time(std::time::SystemTime::now())
}

/// Who presents `credential` to a client-facing API (Meetings, Recordings, the REST
/// routes): the operator, when it is the deployment's operator credential (compared in
/// constant time; never without one), else a participant whose join token `meetings`
/// verifies now.
pub(crate) fn authenticate(
    operator: Option<&Secret>,
    meetings: &MeetingService,
    credential: &str,
) -> Result<Caller, ServiceError> {
    if operator.is_some_and(|o| o.matches(credential)) {
        return Ok(Caller::Operator);
    }
    meetings.authenticate(credential, now())
}

/// The caller of a gRPC request, by its `authorization: Bearer` credential
/// ([`authenticate`]).
pub(crate) fn grpc_caller<T>(
    operator: Option<&Secret>,
    meetings: &MeetingService,
    request: &tonic::Request<T>,
) -> Result<Caller, Status> {
    authenticate(operator, meetings, bearer(request)?).map_err(status)
}

/// The operator only: a participant is refused with PERMISSION_DENIED and `refusal`.
pub(crate) fn operator_only(caller: Caller, refusal: &'static str) -> Result<(), Status> {
    match caller {
        Caller::Operator => Ok(()),
        Caller::Participant(_) => Err(Status::permission_denied(refusal)),
    }
}

/// A shared secret compared in constant time (operator and forwarder enrolment tokens).
#[derive(Clone)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(std::sync::Arc::from(text.into()))
    }

    pub fn matches(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), presented.as_bytes())
            .is_ok()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
