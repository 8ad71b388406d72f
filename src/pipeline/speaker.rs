//! Who spoke: the clinician or the patient, decided from the utterance's language.
//!
//! Design decision: the conversation has exactly two languages, so speaker identification is a
//! language decision plus two overrides: a role the client states (push-to-talk UIs), and the
//! case where both sides share a language, when the language says nothing and the clinician is
//! assumed (the clinician drives the device).

use crate::store::SenderType;

/// Where a speaker decision came from; stored with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client said who is speaking (`{"type":"speaker","role":…}`).
    Client,
    /// The detected language matched one side's language.
    Language,
    /// Nothing decided it (unknown language, or both sides share it): the clinician.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Language => "language",
            Source::Fallback => "fallback",
        }
    }
}

/// The two sides of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Clinician,
    Patient,
}

impl Role {
    pub fn sender_type(self) -> SenderType {
        match self {
            Role::Clinician => SenderType::Clinician,
            Role::Patient => SenderType::Patient,
        }
    }

    /// Parses the client's `speaker` message role.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "clinician" | "user" | "doctor" => Some(Role::Clinician),
            "patient" => Some(Role::Patient),
            _ => None,
        }
    }
}

/// The decision for one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker {
    pub role: Role,
    /// The language the utterance is in; the speaker's side language when the detector could
    /// not tell.
    pub language: String,
    pub source: Source,
    /// 0..=1; how sure the language evidence was (1 for a client-stated role).
    pub confidence: f64,
}

/// Decides the speaker. `detected` is the language detector's answer (code and confidence), or
/// `None` when it failed.
pub fn decide(
    detected: Option<(&str, f64)>,
    client_role: Option<Role>,
    clinician_language: &str,
    patient_language: &str,
) -> Speaker {
    let side_language = |role| match role {
        Role::Clinician => clinician_language,
        Role::Patient => patient_language,
    };
    if let Some(role) = client_role {
        let language = match detected {
            Some((lang, _)) if lang == clinician_language || lang == patient_language => lang,
            _ => side_language(role),
        };
        return Speaker {
            role,
            language: language.to_owned(),
            source: Source::Client,
            confidence: 1.0,
        };
    }
    match detected {
        Some((lang, confidence)) if clinician_language != patient_language => {
            if lang == clinician_language {
                Speaker {
                    role: Role::Clinician,
                    language: lang.to_owned(),
                    source: Source::Language,
                    confidence,
                }
            } else if lang == patient_language {
                Speaker {
                    role: Role::Patient,
                    language: lang.to_owned(),
                    source: Source::Language,
                    confidence,
                }
            } else {
                // A third language: the patient is the one more likely to switch (the
                // original treated every non-clinician language as the patient's).
                Speaker {
                    role: Role::Patient,
                    language: lang.to_owned(),
                    source: Source::Language,
                    confidence: confidence * 0.5,
                }
            }
        }
        _ => Speaker {
            role: Role::Clinician,
            language: clinician_language.to_owned(),
            source: Source::Fallback,
            confidence: 0.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        struct Case {
            detected: Option<(&'static str, f64)>,
            client: Option<Role>,
            clin: &'static str,
            pat: &'static str,
            role: Role,
            lang: &'static str,
            source: Source,
        }
        let cases = [
            Case {
                detected: Some(("en", 0.9)),
                client: None,
                clin: "en",
                pat: "es",
                role: Role::Clinician,
                lang: "en",
                source: Source::Language,
            },
            Case {
                detected: Some(("es", 0.9)),
                client: None,
                clin: "en",
                pat: "es",
                role: Role::Patient,
                lang: "es",
                source: Source::Language,
            },
            Case {
                detected: Some(("es", 0.9)),
                client: None,
                clin: "es",
                pat: "en",
                role: Role::Clinician,
                lang: "es",
                source: Source::Language,
            },
            Case {
                detected: Some(("fr", 0.8)),
                client: None,
                clin: "en",
                pat: "es",
                role: Role::Patient,
                lang: "fr",
                source: Source::Language,
            },
            Case {
                detected: None,
                client: None,
                clin: "en",
                pat: "es",
                role: Role::Clinician,
                lang: "en",
                source: Source::Fallback,
            },
            Case {
                detected: Some(("en", 0.9)),
                client: None,
                clin: "en",
                pat: "en",
                role: Role::Clinician,
                lang: "en",
                source: Source::Fallback,
            },
            Case {
                detected: Some(("en", 0.9)),
                client: Some(Role::Patient),
                clin: "en",
                pat: "es",
                role: Role::Patient,
                lang: "en",
                source: Source::Client,
            },
            Case {
                detected: Some(("de", 0.9)),
                client: Some(Role::Patient),
                clin: "en",
                pat: "es",
                role: Role::Patient,
                lang: "es",
                source: Source::Client,
            },
            Case {
                detected: None,
                client: Some(Role::Clinician),
                clin: "en",
                pat: "es",
                role: Role::Clinician,
                lang: "en",
                source: Source::Client,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let s = decide(c.detected, c.client, c.clin, c.pat);
            assert_eq!(
                (s.role, s.language.as_str(), s.source),
                (c.role, c.lang, c.source),
                "case {i}"
            );
        }
    }

    #[test]
    fn client_roles_parse_with_the_original_names() {
        assert_eq!(Role::parse("user"), Some(Role::Clinician));
        assert_eq!(Role::parse("patient"), Some(Role::Patient));
        assert_eq!(Role::parse("nurse"), None);
        assert_eq!(Role::Clinician.sender_type().as_str(), "user");
    }
}
