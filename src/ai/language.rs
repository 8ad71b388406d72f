//! Local language detection: decide between the conversation's two languages without a network
//! call whenever the text allows it.
//!
//! Design decision: the decision is a short cascade, cheapest evidence first. (1) The STT
//! provider's `languages[]` hint, when it names exactly one candidate, wins: it was derived from
//! the audio. (2) `whatlang` trigram statistics restricted to the candidates (an allowlist, so
//! Spanish is never mistaken for Portuguese in an en/es visit). (3) Only when the text is too
//! short or the score too close is a fallback detector (a chat model) asked. If the fallback
//! fails, the low-confidence local guess is still returned: language decides the speaker, and a
//! guess with its confidence stored beats dropping the utterance.

use std::sync::Arc;

use async_trait::async_trait;
use whatlang::Lang;

use super::{Detection, DetectionSource, LanguageDetector, Result};

/// Nominal confidence recorded for an STT `languages[]` hint (the provider gives no score).
pub const STT_HINT_CONFIDENCE: f32 = 0.9;

/// ISO 639-1 → whatlang language, for every language whatlang knows.
const WHATLANG: &[(&str, Lang)] = &[
    ("af", Lang::Afr),
    ("ak", Lang::Aka),
    ("am", Lang::Amh),
    ("ar", Lang::Ara),
    ("az", Lang::Aze),
    ("be", Lang::Bel),
    ("bg", Lang::Bul),
    ("bn", Lang::Ben),
    ("ca", Lang::Cat),
    ("cs", Lang::Ces),
    ("cy", Lang::Cym),
    ("da", Lang::Dan),
    ("de", Lang::Deu),
    ("el", Lang::Ell),
    ("en", Lang::Eng),
    ("eo", Lang::Epo),
    ("es", Lang::Spa),
    ("et", Lang::Est),
    ("fa", Lang::Pes),
    ("fi", Lang::Fin),
    ("fr", Lang::Fra),
    ("gu", Lang::Guj),
    ("he", Lang::Heb),
    ("hi", Lang::Hin),
    ("hr", Lang::Hrv),
    ("hu", Lang::Hun),
    ("hy", Lang::Hye),
    ("id", Lang::Ind),
    ("it", Lang::Ita),
    ("ja", Lang::Jpn),
    ("jv", Lang::Jav),
    ("ka", Lang::Kat),
    ("km", Lang::Khm),
    ("kn", Lang::Kan),
    ("ko", Lang::Kor),
    ("la", Lang::Lat),
    ("lt", Lang::Lit),
    ("lv", Lang::Lav),
    ("mk", Lang::Mkd),
    ("ml", Lang::Mal),
    ("mr", Lang::Mar),
    ("my", Lang::Mya),
    ("nb", Lang::Nob),
    ("ne", Lang::Nep),
    ("nl", Lang::Nld),
    ("no", Lang::Nob),
    ("or", Lang::Ori),
    ("pa", Lang::Pan),
    ("pl", Lang::Pol),
    ("pt", Lang::Por),
    ("ro", Lang::Ron),
    ("ru", Lang::Rus),
    ("si", Lang::Sin),
    ("sk", Lang::Slk),
    ("sl", Lang::Slv),
    ("sn", Lang::Sna),
    ("sr", Lang::Srp),
    ("sv", Lang::Swe),
    ("ta", Lang::Tam),
    ("te", Lang::Tel),
    ("th", Lang::Tha),
    ("tk", Lang::Tuk),
    ("tl", Lang::Tgl),
    ("tr", Lang::Tur),
    ("uk", Lang::Ukr),
    ("ur", Lang::Urd),
    ("uz", Lang::Uzb),
    ("vi", Lang::Vie),
    ("yi", Lang::Yid),
    ("zh", Lang::Cmn),
    ("zu", Lang::Zul),
];

/// Languages common in clinics that whatlang does not know (detected by the fallback only).
const OTHER_NAMES: &[(&str, &str)] = &[
    ("ht", "Haitian Creole"),
    ("lo", "Lao"),
    ("ms", "Malay"),
    ("ps", "Pashto"),
    ("so", "Somali"),
    ("sw", "Swahili"),
    ("ti", "Tigrinya"),
];

/// `"es-MX"`, `"ES"`, `"es_mx"` → `"es"`.
pub fn normalize_code(code: &str) -> String {
    code.trim()
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn whatlang_of(code: &str) -> Option<Lang> {
    WHATLANG
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, lang)| *lang)
}

/// English name of an ISO 639-1 code, for prompts ("Spanish"); `None` for unknown codes.
pub fn language_name(code: &str) -> Option<&'static str> {
    let code = normalize_code(code);
    whatlang_of(&code).map(Lang::eng_name).or_else(|| {
        OTHER_NAMES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, name)| *name)
    })
}

/// What the local stages concluded.
#[derive(Debug, Clone, PartialEq)]
enum Local {
    /// Decided; no model call needed.
    Decided(Detection),
    /// Ambiguous: ask the fallback; the best guess (if any) is kept in case it fails.
    Ambiguous(Option<Detection>),
}

/// Thresholds of the local stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalThresholds {
    /// Fewer letters than this is "too short" for trigram statistics.
    pub min_letters: usize,
    /// A whatlang confidence below this is "ambiguous".
    pub min_confidence: f64,
}

impl Default for LocalThresholds {
    fn default() -> Self {
        LocalThresholds {
            min_letters: 12,
            // From a small en/es probe: whatlang's two-language confidence is modest even when
            // right (0.45-0.9 for 4-8 word utterances, often under 0.4 for two-word phrases),
            // so 0.4 sends mostly the short ones to the fallback. Tune per deployment.
            min_confidence: 0.4,
        }
    }
}

/// Pure local decision (hint, then whatlang); no I/O.
fn decide_locally(
    text: &str,
    candidates: &[String],
    stt_hint: &[&str],
    thresholds: LocalThresholds,
) -> Local {
    let hinted: Vec<&String> = candidates
        .iter()
        .filter(|c| stt_hint.iter().any(|h| normalize_code(h) == **c))
        .collect();
    if let [only] = hinted.as_slice() {
        return Local::Decided(Detection {
            language: (*only).clone(),
            confidence: STT_HINT_CONFIDENCE,
            source: DetectionSource::SttHint,
        });
    }
    match candidates {
        [] => return Local::Ambiguous(None),
        [only] => {
            return Local::Decided(Detection {
                language: only.clone(),
                confidence: 1.0,
                source: DetectionSource::Local,
            })
        }
        _ => {}
    }
    let langs: Option<Vec<Lang>> = candidates.iter().map(|c| whatlang_of(c)).collect();
    // A candidate whatlang cannot recognise would make the allowlist always pick the other.
    let Some(langs) = langs else {
        return Local::Ambiguous(None);
    };
    let Some(info) = whatlang::Detector::with_allowlist(langs).detect(text) else {
        return Local::Ambiguous(None);
    };
    let Some(code) = WHATLANG
        .iter()
        .find(|(c, l)| *l == info.lang() && candidates.iter().any(|cand| cand == c))
        .map(|(c, _)| *c)
    else {
        return Local::Ambiguous(None);
    };
    let guess = Detection {
        language: code.to_owned(),
        confidence: info.confidence() as f32,
        source: DetectionSource::Local,
    };
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    if letters < thresholds.min_letters || info.confidence() < thresholds.min_confidence {
        Local::Ambiguous(Some(guess))
    } else {
        Local::Decided(guess)
    }
}

/// [`LanguageDetector`] that decides locally and calls `fallback` only when ambiguous.
pub struct LocalLanguageDetector {
    fallback: Option<Arc<dyn LanguageDetector>>,
    thresholds: LocalThresholds,
}

impl LocalLanguageDetector {
    /// `fallback` (usually the OpenAI detector) is asked only for ambiguous text; without one
    /// the low-confidence local guess is returned.
    pub fn new(fallback: Option<Arc<dyn LanguageDetector>>) -> LocalLanguageDetector {
        LocalLanguageDetector {
            fallback,
            thresholds: LocalThresholds::default(),
        }
    }

    /// Overrides the ambiguity thresholds.
    pub fn with_thresholds(mut self, thresholds: LocalThresholds) -> LocalLanguageDetector {
        self.thresholds = thresholds;
        self
    }
}

#[async_trait]
impl LanguageDetector for LocalLanguageDetector {
    /// # Errors
    /// The fallback's error, only when there is no local guess at all (e.g. digits only and a
    /// candidate whatlang does not know).
    async fn detect(
        &self,
        text: &str,
        candidates: &[&str],
        stt_hint: &[&str],
    ) -> Result<Detection> {
        let normalized: Vec<String> = candidates.iter().map(|c| normalize_code(c)).collect();
        let guess = match decide_locally(text, &normalized, stt_hint, self.thresholds) {
            Local::Decided(detection) => return Ok(detection),
            Local::Ambiguous(guess) => guess,
        };
        let Some(fallback) = &self.fallback else {
            return Ok(guess.unwrap_or_else(|| Detection {
                // No evidence at all: the first candidate (the clinician's language) is the
                // original system's default ("unknown" was treated as the clinician).
                language: normalized.first().cloned().unwrap_or_default(),
                confidence: 0.0,
                source: DetectionSource::Local,
            }));
        };
        match fallback.detect(text, candidates, stt_hint).await {
            Ok(detection) => Ok(detection),
            Err(error) => match guess {
                Some(guess) => {
                    tracing::warn!(
                        code = error.code(),
                        "language fallback failed; using local guess"
                    );
                    Ok(guess)
                }
                None => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn decided(text: &str, list: &[&str], hint: &[&str]) -> Detection {
        match decide_locally(text, &cands(list), hint, LocalThresholds::default()) {
            Local::Decided(d) => d,
            other => panic!("expected a decision for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn english_and_spanish_sentences_are_decided_locally() {
        let en = decided(
            "I have had a headache for three days and it gets worse at night",
            &["en", "es"],
            &[],
        );
        assert_eq!(
            (en.language.as_str(), en.source),
            ("en", DetectionSource::Local)
        );
        let es = decided(
            "Me duele la cabeza desde hace tres días y empeora por la noche",
            &["en", "es"],
            &[],
        );
        assert_eq!(es.language, "es");
    }

    #[test]
    fn allowlist_keeps_the_answer_inside_the_pair() {
        // Portuguese-looking text in an en/es visit must still answer en or es.
        let d = decided(
            "Eu tenho dor de cabeça há três dias e piora à noite",
            &["en", "es"],
            &[],
        );
        assert!(d.language == "es" || d.language == "en");
    }

    #[test]
    fn stt_hint_naming_one_candidate_wins() {
        let d = decided("ok", &["en", "es"], &["es"]);
        assert_eq!(d.language, "es");
        assert_eq!(d.source, DetectionSource::SttHint);
        // A hint naming both candidates is no hint.
        assert!(matches!(
            decide_locally(
                "sí",
                &cands(&["en", "es"]),
                &["en", "es"],
                Default::default()
            ),
            Local::Ambiguous(_)
        ));
    }

    #[test]
    fn short_text_is_ambiguous() {
        assert!(matches!(
            decide_locally("no", &cands(&["en", "es"]), &[], Default::default()),
            Local::Ambiguous(_)
        ));
    }

    #[test]
    fn unknown_candidate_needs_the_fallback() {
        assert_eq!(
            decide_locally(
                "Mwen gen tèt fè mal depi twa jou",
                &cands(&["en", "ht"]),
                &[],
                Default::default()
            ),
            Local::Ambiguous(None)
        );
    }

    #[test]
    fn codes_normalize_and_name() {
        assert_eq!(normalize_code("es-MX"), "es");
        assert_eq!(language_name("ES"), Some("Spanish"));
        assert_eq!(language_name("ht"), Some("Haitian Creole"));
        assert_eq!(language_name("xx"), None);
    }

    struct Fixed(Result<Detection>);

    #[async_trait]
    impl LanguageDetector for Fixed {
        async fn detect(&self, _: &str, _: &[&str], _: &[&str]) -> Result<Detection> {
            match &self.0 {
                Ok(d) => Ok(d.clone()),
                Err(_) => Err(crate::ai::Error::Timeout),
            }
        }
    }

    #[tokio::test]
    async fn fallback_used_only_when_ambiguous_and_guess_kept_on_failure() {
        let llm = Detection {
            language: "es".into(),
            confidence: 0.8,
            source: DetectionSource::Llm,
        };
        let det = LocalLanguageDetector::new(Some(Arc::new(Fixed(Ok(llm.clone())))));
        assert_eq!(det.detect("sí", &["en", "es"], &[]).await.unwrap(), llm);
        let clear = det
            .detect(
                "The pain started after I ate dinner last night",
                &["en", "es"],
                &[],
            )
            .await
            .unwrap();
        assert_eq!(clear.source, DetectionSource::Local);

        let failing =
            LocalLanguageDetector::new(Some(Arc::new(Fixed(Err(crate::ai::Error::Timeout)))));
        let d = failing.detect("yes", &["en", "es"], &[]).await.unwrap();
        assert_eq!(d.source, DetectionSource::Local);
        assert!(failing.detect("500", &["en", "ht"], &[]).await.is_err());
    }
}
