//! Placeholder for the fake HTTP API (owned by the ai work; replaced at merge).

use std::sync::Arc;

use warp::{Filter, Rejection, Reply};

/// Placeholder state.
#[derive(Debug, Default)]
pub struct State {
    _private: (),
}

/// Placeholder routes: everything is not found.
pub fn routes(
    _state: Arc<State>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::any().and_then(|| async { Err::<String, Rejection>(warp::reject::not_found()) })
}
