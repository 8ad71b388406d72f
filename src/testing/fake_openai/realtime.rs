//! Placeholder for the Realtime half of the fake provider, only so the HTTP half compiles and
//! is tested on its own branch; the STT branch's version replaces this file at merge.

use std::sync::Arc;

use warp::{Filter, Rejection, Reply};

/// Placeholder state: the real one holds the transcription script and fault switches.
#[derive(Debug, Default)]
pub struct State {
    _placeholder: (),
}

/// Rejects every request, so `route(..).or(http::routes(..))` falls through to the HTTP half.
pub fn route(
    _state: Arc<State>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::any().and_then(|| async { Err::<String, Rejection>(warp::reject::not_found()) })
}
