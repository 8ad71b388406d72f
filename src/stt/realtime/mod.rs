//! OpenAI Realtime transcription client (GA, beta and speaches dialects).
//!
//! [`protocol`] holds the wire types, [`session`] the pure state machine (ring buffer, replay,
//! dedup, ordering), [`connect`] the socket task (dial, reconnect, rotation, watchdog).
//! This module owns the configuration and the translation of [`SttOptions`] into a dialect's
//! session update. Key decision: all three dialects share one state machine; they differ only in
//! the URL, a header and the shape of the session update.

use std::time::Duration;

use url::Url;

use super::vad::VadConfig;
use super::{Error, SttOptions};
use protocol::{
    AudioFormat, BetaSession, ClientEvent, GaAudio, GaAudioInput, GaSession, NoiseReduction,
    NoiseReductionType, SessionConfig, Transcription, TurnDetection,
};

pub mod connect;
pub mod protocol;
pub mod session;

pub use connect::RealtimeStt;

/// Which flavour of the Realtime protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI GA: `session.update` with `session.type = "transcription"`.
    Ga,
    /// OpenAI beta: `transcription_session.update` and `OpenAI-Beta: realtime=v1`.
    Beta,
    /// speaches: beta-shaped `session.update`, `model` in the URL, completed events only.
    Speaches,
}

/// Provider-side voice activity detection parameters (`server_vad`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerVad {
    /// Activation threshold, 0..1.
    pub threshold: f32,
    /// Audio kept before detected speech.
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn.
    pub silence_duration_ms: u32,
}

impl Default for ServerVad {
    fn default() -> Self {
        ServerVad {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// Reconnect backoff: capped exponential with multiplicative jitter (the openai-python policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    /// Consecutive failed attempts before giving up; reset by every successful connection.
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Each delay is multiplied by a uniform factor in this range.
    pub jitter: (f64, f64),
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            jitter: (0.75, 1.0),
        }
    }
}

impl ReconnectPolicy {
    /// Delay before attempt `attempt` (1-based), given a jitter draw `u` in 0..=1.
    pub fn delay(&self, attempt: u32, u: f64) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let base = exp.min(self.max_delay);
        let (lo, hi) = self.jitter;
        base.mul_f64(lo + (hi - lo) * u.clamp(0.0, 1.0))
    }
}

/// Everything the Realtime client needs; composed by the server's `Config`, built directly in tests.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// API base, e.g. `https://api.openai.com/v1`; `http(s)` becomes `ws(s)` and
    /// `/realtime?intent=transcription` is appended.
    pub base_url: Url,
    /// Sent as `Authorization: Bearer`; `None` for keyless self-hosted servers.
    pub api_key: Option<String>,
    pub dialect: Dialect,
    /// Transcription model (default `gpt-4o-transcribe`).
    pub model: String,
    /// Default `far_field` (exam-room microphones); `None` disables it.
    pub noise_reduction: Option<NoiseReductionType>,
    /// `Some` = provider VAD decides turns; `None` = the local VAD commits each utterance.
    pub turn_detection: Option<ServerVad>,
    /// Local VAD tuning (commits when `turn_detection` is `None`; replay trimming always).
    pub local_vad: VadConfig,
    /// Ask for token log-probabilities (a confidence on each transcript).
    pub include_logprobs: bool,
    pub reconnect: ReconnectPolicy,
    /// Rotate to a fresh provider session at the first turn boundary after this age (providers
    /// cap sessions at 30–60 min).
    pub max_session_age: Duration,
    /// Reconnect when a commit or transcript has been awaited this long with no server event.
    pub watchdog: Duration,
    /// Un-transcribed audio kept for replay; beyond it the oldest is dropped with a warning.
    pub ring_buffer: Duration,
    /// Longest a transcript waits for an earlier turn's transcript (see `session`).
    pub final_hold: Duration,
    /// Limit on one WebSocket handshake.
    pub handshake_timeout: Duration,
}

impl RealtimeConfig {
    /// The defaults for a provider at `base_url`.
    pub fn new(base_url: Url) -> RealtimeConfig {
        RealtimeConfig {
            base_url,
            api_key: None,
            dialect: Dialect::Ga,
            model: "gpt-4o-transcribe".into(),
            noise_reduction: Some(NoiseReductionType::FarField),
            turn_detection: Some(ServerVad::default()),
            local_vad: VadConfig::default(),
            include_logprobs: true,
            reconnect: ReconnectPolicy::default(),
            max_session_age: Duration::from_secs(50 * 60),
            watchdog: Duration::from_secs(15),
            ring_buffer: Duration::from_secs(30),
            final_hold: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// The WebSocket URL to dial.
    ///
    /// # Errors
    /// [`Error::Config`] if the base URL is not http(s)/ws(s).
    pub fn ws_url(&self) -> Result<Url, Error> {
        let mut url = self.base_url.clone();
        let scheme = match url.scheme() {
            "http" | "ws" => "ws",
            "https" | "wss" => "wss",
            other => {
                return Err(Error::Config(format!(
                    "unsupported base URL scheme {other:?}"
                )))
            }
        };
        url.set_scheme(scheme)
            .map_err(|()| Error::Config("cannot use the base URL as a WebSocket URL".into()))?;
        let path = format!("{}/realtime", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("intent", "transcription");
            if self.dialect == Dialect::Speaches {
                q.append_pair("model", &self.model);
            }
        }
        Ok(url)
    }

    /// The session update for this dialect and conversation.
    ///
    /// Language hints: the `gpt-transcribe` family takes the conversation's two languages and the
    /// glossary as `languages`/`keywords`. Other models accept one `language`, which is set only
    /// when the conversation has a single language (pinning one of two would garble the other),
    /// and the glossary is folded into the prompt.
    pub fn session_update(&self, opts: &SttOptions) -> ClientEvent {
        let listy = self.dialect == Dialect::Ga
            && matches!(
                self.model.as_str(),
                "gpt-transcribe" | "gpt-live-transcribe"
            );
        let mut transcription = Transcription {
            model: self.model.clone(),
            prompt: opts.prompt.clone(),
            ..Default::default()
        };
        if listy {
            transcription.languages = opts.languages.clone();
            transcription.keywords = opts.keywords.clone();
        } else {
            if let [only] = opts.languages.as_slice() {
                transcription.language = Some(only.clone());
            }
            if !opts.keywords.is_empty() {
                let words = opts.keywords.join(", ");
                transcription.prompt = Some(match transcription.prompt.take() {
                    Some(p) => format!("{p}\nVocabulary: {words}"),
                    None => format!("Vocabulary: {words}"),
                });
            }
        }
        let turn_detection = self.turn_detection.map(|v| TurnDetection::ServerVad {
            threshold: Some(v.threshold),
            prefix_padding_ms: Some(v.prefix_padding_ms),
            silence_duration_ms: Some(v.silence_duration_ms),
        });
        let noise_reduction = self.noise_reduction.map(|kind| NoiseReduction { kind });
        let include = if self.include_logprobs && self.dialect != Dialect::Speaches {
            vec!["item.input_audio_transcription.logprobs".to_string()]
        } else {
            vec![]
        };
        match self.dialect {
            Dialect::Ga => ClientEvent::SessionUpdate {
                session: SessionConfig::Ga(GaSession {
                    kind: "transcription".into(),
                    audio: GaAudio {
                        input: GaAudioInput {
                            format: AudioFormat::pcm24k(),
                            transcription,
                            turn_detection,
                            noise_reduction,
                        },
                    },
                    include,
                }),
            },
            Dialect::Beta | Dialect::Speaches => {
                let session = BetaSession {
                    input_audio_format: Some("pcm16".into()),
                    input_audio_transcription: transcription,
                    turn_detection,
                    input_audio_noise_reduction: if self.dialect == Dialect::Beta {
                        noise_reduction
                    } else {
                        None
                    },
                    include,
                };
                if self.dialect == Dialect::Beta {
                    ClientEvent::TranscriptionSessionUpdate { session }
                } else {
                    ClientEvent::SessionUpdate {
                        session: SessionConfig::Beta(session),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base: &str, dialect: Dialect) -> RealtimeConfig {
        let mut c = RealtimeConfig::new(Url::parse(base).unwrap());
        c.dialect = dialect;
        c
    }

    #[test]
    fn ws_url() {
        let cases = [
            (
                "https://api.openai.com/v1",
                Dialect::Ga,
                "wss://api.openai.com/v1/realtime?intent=transcription",
            ),
            (
                "http://127.0.0.1:9/v1/",
                Dialect::Beta,
                "ws://127.0.0.1:9/v1/realtime?intent=transcription",
            ),
            (
                "http://h/v1",
                Dialect::Speaches,
                "ws://h/v1/realtime?intent=transcription&model=gpt-4o-transcribe",
            ),
        ];
        for (base, dialect, want) in cases {
            assert_eq!(cfg(base, dialect).ws_url().unwrap().as_str(), want);
        }
        assert_eq!(
            cfg("ftp://h/", Dialect::Ga).ws_url().unwrap_err().code(),
            "stt_config"
        );
    }

    #[test]
    fn language_hints_per_model() {
        let opts = SttOptions {
            languages: vec!["en".into(), "es".into()],
            prompt: None,
            keywords: vec!["metformin".into()],
        };
        let mut c = cfg("http://h/v1", Dialect::Ga);
        c.model = "gpt-transcribe".into();
        let v = serde_json::to_value(c.session_update(&opts)).unwrap();
        let t = &v["session"]["audio"]["input"]["transcription"];
        assert_eq!(t["languages"], serde_json::json!(["en", "es"]));
        assert_eq!(t["keywords"], serde_json::json!(["metformin"]));

        let c = cfg("http://h/v1", Dialect::Beta);
        let v = serde_json::to_value(c.session_update(&opts)).unwrap();
        assert_eq!(v["type"], "transcription_session.update");
        let t = &v["session"]["input_audio_transcription"];
        assert!(t.get("language").is_none());
        assert_eq!(t["prompt"], "Vocabulary: metformin");
        assert_eq!(
            v["session"]["input_audio_noise_reduction"]["type"],
            "far_field"
        );
    }

    #[test]
    fn backoff_is_capped_exponential_with_jitter() {
        let p = ReconnectPolicy::default();
        let ms = |a, u| p.delay(a, u).as_millis();
        assert_eq!(ms(1, 1.0), 500);
        assert_eq!(ms(1, 0.0), 375);
        assert_eq!(ms(2, 1.0), 1000);
        assert_eq!(ms(5, 1.0), 8000);
        assert_eq!(ms(9, 1.0), 8000);
        assert_eq!(ms(40, 0.0), 6000);
    }
}
