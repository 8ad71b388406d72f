//! A visit's records in the live system: ending a visit (stop the audio, drain, write the final
//! summary), interim summaries and medical histories on voice request or in the background,
//! and the events that announce them.
//!
//! Design decisions:
//! - Ending is pipecat's `EndFrame`, not `CancelFrame`: audio sockets are told and closed, each
//!   drains what it received, the STT session commits and delivers its last transcript, and the
//!   lane processes it; only then is the summary written, so it covers everything said.
//! - Background work (the end-of-visit summary, the medical history at conversation start,
//!   interim summaries) runs on the pipeline's [`TaskTracker`](tokio_util::task::TaskTracker),
//!   so server shutdown waits for it up to the drain deadline instead of dropping it silently.
//! - A final summary cut off by a stop (the conversation stays `ended`) is written by the next
//!   start, in the background and bounded ([`Pipelines::recover_summaries`]); `ended_error`
//!   records a failure and is left to `POST …/summary`, so a broken provider is not retried
//!   at every start.
//! - Results go to the control sockets of users interested in the conversation (and to its
//!   audio sockets, for a clinician's voice request), in the original shapes (`summary_data`
//!   with a string, `medical_history_data`) plus Tandem's `summary_ready`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cluster::{self, Cluster};
use super::event::{self, CommandExecuted, ServerEvent};
use super::hub::Audience;
use super::{lock, transcript, Live, Pipelines};
use crate::audit::PhiRead;
use crate::records::{self, HistoryOrigin, Records, SummaryStage, SummaryView};
use crate::store::{
    now_millis, Conversation, ConversationStatus, ConversationWithPatient, Document,
};

/// How long an ending visit waits for its audio to drain before it summarizes what is stored.
/// Draining is one STT commit plus one utterance's processing; this leaves room for a slow
/// provider without holding the summary back forever.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// How often an ending visit driven by another instance checks whether it has drained.
const CLAIM_RETRY: Duration = Duration::from_millis(100);

/// Summaries cut off by a stop are written at start only for visits that ended this recently:
/// an old backup restored must not set off a wave of model calls for visits nobody waits on
/// (`POST …/summary` still writes any of them).
pub const RECOVERY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// At most this many summaries are recovered per start, oldest visit first; the rest wait for
/// the next start, so a backlog cannot hold the provider for long.
const RECOVERY_LIMIT: u32 = 100;

/// Recovered summaries written at once: each is two model calls, and live visits share the
/// provider.
const RECOVERY_CONCURRENCY: usize = 2;

/// A visit that ended this recently may still be draining and summarizing on another instance
/// sharing the database; its recovery waits this long after its end, then finds out whether
/// that instance finished. Covers the drain plus the summary's model calls.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(2 * 60);

/// What recovering one conversation's summary came to.
enum Recovered {
    Written,
    /// Writing it failed: the status says `ended_error` (the provider or reading the
    /// transcript failed), or is still `ended` when the store failed before or while recording
    /// that status (tried again at the next start).
    Failed,
    /// Another writer finished it first or holds it, or shutdown came before its turn.
    Skipped,
}

/// The right to end one conversation, held from the status change until its summary is
/// written; dropping it releases the conversation.
pub struct EndClaim {
    pipelines: Arc<Pipelines>,
    conversation_id: String,
}

impl Drop for EndClaim {
    fn drop(&mut self) {
        lock(&self.pipelines.ending).remove(&self.conversation_id);
    }
}

impl Pipelines {
    /// Claims the ending of a conversation; `None` while another request of this process is
    /// ending it. The caller re-reads the status after claiming.
    pub fn claim_end(self: &Arc<Self>, conversation_id: &str) -> Option<EndClaim> {
        lock(&self.ending)
            .insert(conversation_id.to_owned())
            .then(|| EndClaim {
                pipelines: Arc::clone(self),
                conversation_id: conversation_id.to_owned(),
            })
    }

    /// Stops the conversation's audio: its sockets are told (`conversation_ended`) and close,
    /// then this waits until every utterance already spoken is processed, at most `deadline`.
    /// Returns whether it drained in time (a conversation without live audio has nothing to
    /// drain). Audio driven by another instance is stopped there.
    pub async fn stop_audio(&self, conversation_id: &str, deadline: Duration) -> bool {
        let Some(live) = self.end_live_audio(conversation_id) else {
            return self.stop_audio_elsewhere(conversation_id, deadline).await;
        };
        tokio::time::timeout(deadline, live.drained.cancelled())
            .await
            .is_ok()
    }

    /// Tells this instance's audio sockets of the conversation that the visit ended and makes
    /// them close; returns its runtime, if it is live here.
    pub(super) fn end_live_audio(&self, conversation_id: &str) -> Option<Arc<Live>> {
        let live = lock(&self.live).get(conversation_id).cloned()?;
        self.publish(
            conversation_id,
            Audience::Audio,
            &ServerEvent::ConversationEnded {
                payload: event::ConversationEnded {
                    conversation_id: conversation_id.to_owned(),
                    message: "The visit has ended; recording is closed.",
                },
            },
        );
        live.ended.cancel();
        Some(live)
    }

    /// Asks whichever instance drives the conversation to end its audio, then waits until it
    /// let go: the claim is released only once its last utterance is processed, so a claim
    /// this instance can take means the audio drained (at once with a single instance).
    async fn stop_audio_elsewhere(&self, conversation_id: &str, deadline: Duration) -> bool {
        self.cluster.stop_audio_elsewhere(conversation_id);
        let drained = async {
            loop {
                match self.cluster.claim(conversation_id).await {
                    Ok(()) => {
                        self.cluster.release(conversation_id).await;
                        return true;
                    }
                    Err(cluster::Error::Busy) => tokio::time::sleep(CLAIM_RETRY).await,
                    Err(cluster::Error::Unavailable) => return false,
                }
            }
        };
        tokio::time::timeout(deadline, drained)
            .await
            .unwrap_or(false)
    }

    /// Finishes an ended visit in the background: stop and drain its audio, then write the
    /// final summary (status `summarized`, or `ended_error` on failure) and announce it. The
    /// handle resolves when the summary is stored or has failed.
    pub fn finish_visit(
        self: &Arc<Self>,
        claim: EndClaim,
        organization_id: String,
    ) -> JoinHandle<Result<Document, records::Error>> {
        let pipelines = Arc::clone(self);
        self.tasks.spawn(async move {
            let conversation_id = claim.conversation_id.clone();
            if !pipelines.stop_audio(&conversation_id, DRAIN_DEADLINE).await {
                tracing::warn!(
                    %conversation_id,
                    deadline = ?DRAIN_DEADLINE,
                    "audio did not drain in time; summarizing what is stored"
                );
            }
            summarize(
                &pipelines.records,
                &*pipelines.cluster,
                &organization_id,
                &conversation_id,
                SummaryStage::Final,
            )
            .await
            // `claim` is released here, after the summary.
        })
    }

    /// Writes the final summary again (after a failure, or to regenerate it) and announces it.
    ///
    /// # Errors
    /// See [`Records::summarize`].
    pub async fn resummarize(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> Result<Document, records::Error> {
        summarize(
            &self.records,
            &*self.cluster,
            organization_id,
            conversation_id,
            SummaryStage::Final,
        )
        .await
    }

    /// Writes the final summaries a stopped process left unwritten: conversations still
    /// `ended` (neither `summarized` nor `ended_error`) that ended within [`RECOVERY_WINDOW`],
    /// at most [`RECOVERY_LIMIT`] per start, oldest first, [`RECOVERY_CONCURRENCY`] at a time,
    /// each once: a provider failure marks it `ended_error` as at the end of a visit, and it
    /// waits for `POST …/summary`. Runs in the background from start until done or `stop`;
    /// work cut off by `stop` stays `ended` and is picked up by the next start. Logs counts,
    /// never text.
    pub async fn recover_summaries(self: Arc<Self>, stop: CancellationToken) {
        let window = i64::try_from(RECOVERY_WINDOW.as_millis()).unwrap_or(i64::MAX);
        let since = now_millis().saturating_sub(window);
        let candidates = match self
            .store
            .list_unsummarized_conversations(since, RECOVERY_LIMIT)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot look for summaries cut off by a stop; none recovered");
                return;
            }
        };
        if candidates.is_empty() {
            return;
        }
        tracing::info!(
            found = candidates.len(),
            limit = RECOVERY_LIMIT,
            "writing final summaries cut off by a stop"
        );
        let outcomes: Vec<Recovered> = futures_util::stream::iter(candidates)
            .map(|c| self.recover_summary(c, &stop))
            .buffer_unordered(RECOVERY_CONCURRENCY)
            .collect()
            .await;
        let count = |kind: fn(&Recovered) -> bool| outcomes.iter().filter(|o| kind(o)).count();
        tracing::info!(
            written = count(|o| matches!(o, Recovered::Written)),
            failed = count(|o| matches!(o, Recovered::Failed)),
            skipped = count(|o| matches!(o, Recovered::Skipped)),
            "summary recovery finished"
        );
    }

    /// Waits out [`RECOVERY_GRACE`] after the visit's end, then writes its summary unless it
    /// is being ended in this process, another instance holds it, or it no longer needs one.
    async fn recover_summary(
        self: &Arc<Self>,
        conversation: Conversation,
        stop: &CancellationToken,
    ) -> Recovered {
        let grace = i64::try_from(RECOVERY_GRACE.as_millis()).unwrap_or(i64::MAX);
        let ready_at = conversation.end_time.unwrap_or(0).saturating_add(grace);
        let wait = u64::try_from(ready_at.saturating_sub(now_millis())).unwrap_or(0);
        tokio::select! {
            biased;
            () = stop.cancelled() => return Recovered::Skipped,
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
        let Some(_claim) = self.claim_end(&conversation.id) else {
            return Recovered::Skipped;
        };
        // Instances starting together on one database recover each conversation once: the
        // one holding the cluster claim writes it, the others find it written or skip it.
        if self.cluster.claim(&conversation.id).await.is_err() {
            return Recovered::Skipped;
        }
        let written = self
            .records
            .summarize_unsummarized(&conversation.organization_id, &conversation.id)
            .await
            .transpose();
        self.cluster.release(&conversation.id).await;
        match written {
            None => Recovered::Skipped,
            Some(result) => {
                announce_summary(
                    &*self.cluster,
                    &conversation.id,
                    SummaryStage::Final,
                    &result,
                );
                if result.is_ok() {
                    Recovered::Written
                } else {
                    Recovered::Failed
                }
            }
        }
    }

    /// Attaches (or generates) the medical history of a new conversation's patient in the
    /// background and pushes it. Failures are logged and sent as an `error` event; the next
    /// `request_medical_history` tries again.
    pub fn prepare_medical_history(self: &Arc<Self>, conversation: ConversationWithPatient) {
        let records = Arc::clone(&self.records);
        let cluster = Arc::clone(&self.cluster);
        self.tasks.spawn(async move {
            // Errors are announced inside; nothing waits for this task.
            let _ = medical_history(&records, &*cluster, &conversation).await;
        });
    }
}

/// Writes a summary and announces it: `summary_ready` and `summary_data` on success, an
/// `error` event (`summary_failed`) otherwise.
async fn summarize(
    records: &Records,
    cluster: &dyn Cluster,
    organization_id: &str,
    conversation_id: &str,
    stage: SummaryStage,
) -> Result<Document, records::Error> {
    let result = records
        .summarize(organization_id, conversation_id, stage)
        .await;
    announce_summary(cluster, conversation_id, stage, &result);
    result
}

/// Announces a written summary (`summary_ready`, `summary_data`) or its failure (`error`
/// `summary_failed`); an interim summary refused because the visit ended is not news.
fn announce_summary(
    cluster: &dyn Cluster,
    conversation_id: &str,
    stage: SummaryStage,
    result: &Result<Document, records::Error>,
) {
    match result {
        Ok(doc) => {
            let status = match stage {
                SummaryStage::Final => ConversationStatus::Summarized,
                SummaryStage::Interim => ConversationStatus::Active,
            };
            let view = SummaryView::from(doc);
            let data = ServerEvent::SummaryData {
                payload: event::SummaryData {
                    conversation_id: conversation_id.to_owned(),
                    summary: Some(view.content.clone()),
                },
            };
            let ready = ServerEvent::SummaryReady {
                payload: event::SummaryReady {
                    conversation_id: conversation_id.to_owned(),
                    status: status.as_str(),
                    summary: view,
                },
            };
            tracing::info!(%conversation_id, ?stage, "summary written");
            announce(cluster, conversation_id, &[ready, data]);
        }
        Err(records::Error::Ended) => {}
        Err(e) => {
            tracing::warn!(%conversation_id, ?stage, code = e.code(), error = %e, "summary failed");
            announce(
                cluster,
                conversation_id,
                &[ServerEvent::error(
                    "summary_failed",
                    format!(
                        "The summary could not be written ({}); retry with POST \
                         /api/v1/conversations/{conversation_id}/summary.",
                        public_reason(e)
                    ),
                )],
            );
        }
    }
}

/// Attaches the conversation's medical history and pushes `medical_history_data`; failures
/// are logged and announced as `error` (`medical_history_failed`).
async fn medical_history(
    records: &Records,
    cluster: &dyn Cluster,
    conversation: &ConversationWithPatient,
) -> Result<Document, records::Error> {
    let id = &conversation.conversation.id;
    match records.medical_history(conversation).await {
        Ok((doc, origin)) => {
            if origin != HistoryOrigin::Existing {
                tracing::info!(conversation_id = %id, ?origin, "medical history attached");
            }
            announce(
                cluster,
                id,
                &[ServerEvent::MedicalHistoryData {
                    payload: event::MedicalHistoryData::new(id.clone(), Some(doc.content.clone())),
                }],
            );
            Ok(doc)
        }
        Err(e) => {
            tracing::warn!(conversation_id = %id, code = e.code(), error = %e, "medical history failed");
            announce(
                cluster,
                id,
                &[ServerEvent::error(
                    "medical_history_failed",
                    format!(
                        "The medical history could not be prepared ({}).",
                        public_reason(&e)
                    ),
                )],
            );
            Err(e)
        }
    }
}

/// Sends events to the conversation's control sockets and its audio sockets.
fn announce(cluster: &dyn Cluster, conversation_id: &str, events: &[ServerEvent]) {
    for event in events {
        let frame = event.to_frame();
        cluster.publish(conversation_id, Audience::Control, frame.clone());
        cluster.publish(conversation_id, Audience::Audio, frame);
    }
}

/// A failure as users may read it: no provider bodies, no database details.
fn public_reason(e: &records::Error) -> &'static str {
    match e {
        records::Error::Provider(e) => transcript::provider_message(e),
        records::Error::Store(_) => "the record could not be saved",
        records::Error::Ended => "the visit has ended",
    }
}

/// `request_summary`: an interim summary is written in the background (a model call must not
/// hold up the next utterances) and announced with `summary_ready`.
pub(super) fn request_summary(pipelines: &Pipelines, live: &Live) -> CommandExecuted {
    let records = Arc::clone(&pipelines.records);
    let cluster = Arc::clone(&pipelines.cluster);
    let organization_id = live.organization_id.clone();
    let conversation_id = live.conversation_id.clone();
    pipelines.tasks.spawn(async move {
        // Announced inside; an ended visit gets its final summary instead.
        let _ = summarize(
            &records,
            &*cluster,
            &organization_id,
            &conversation_id,
            SummaryStage::Interim,
        )
        .await;
    });
    CommandExecuted::without_action(
        "success",
        "request_summary",
        "Writing an interim summary; it is sent as soon as it is ready.".to_owned(),
        json!({}),
    )
}

/// `request_medical_history`: the conversation's medical history (attached or generated now),
/// pushed as `medical_history_data` and returned in the acknowledgement.
pub(super) async fn request_medical_history(pipelines: &Pipelines, live: &Live) -> CommandExecuted {
    const NAME: &str = "request_medical_history";
    let conversation = match pipelines
        .store
        .get_conversation(&live.organization_id, &live.conversation_id)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(conversation_id = %live.conversation_id, error = %e, "cannot load the conversation");
            return CommandExecuted::without_action(
                "error",
                NAME,
                "The medical history could not be loaded.".to_owned(),
                json!({}),
            );
        }
    };
    // Audited like the control socket's `get_medical_history`, attributed to the clinician
    // whose visit it is, and fail closed: no audit entry, no history.
    let entry = PhiRead::MedicalHistory.entry(
        &live.organization_id,
        &live.clinician_id,
        None,
        &live.conversation_id,
        vec![conversation.patient.id.clone()],
    );
    if let Err(e) = pipelines.store.record_audit(entry).await {
        tracing::error!(conversation_id = %live.conversation_id, error = %e, "audit write failed; the medical history is not sent");
        return CommandExecuted::without_action(
            "error",
            NAME,
            "The medical history could not be sent: the access could not be recorded in the audit log.".to_owned(),
            json!({}),
        );
    }
    match medical_history(&pipelines.records, &*pipelines.cluster, &conversation).await {
        Ok(doc) => CommandExecuted::without_action(
            "success",
            NAME,
            "Medical history sent.".to_owned(),
            json!({ "medicalHistory": doc.content }),
        ),
        Err(e) => CommandExecuted::without_action(
            "error",
            NAME,
            format!(
                "The medical history could not be prepared ({}).",
                public_reason(&e)
            ),
            json!({}),
        ),
    }
}
