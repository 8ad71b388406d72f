//! What the audit log calls each read of patient data, and how such a read becomes one
//! [`NewAuditEntry`].
//!
//! Design decision: the reads are a closed enum ([`PhiRead`]), not free strings at each call
//! site, so the REST handlers, the control socket and the voice pipeline name the same read the
//! same way, and the documented list of action names cannot drift from the code. An entry holds
//! ids only, never the content that was read.

use std::net::IpAddr;

use crate::store::NewAuditEntry;

/// A read that sends protected health information to a user. Each response (REST) or reply
/// event (control socket) is one entry; a listing is one entry whose `record_ids` are the rows
/// it returned, so a page of 100 patients costs one insert, not 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhiRead {
    /// `GET /patients/:id`.
    Patient,
    /// `GET /patients`: the page's patient ids.
    PatientList,
    /// `GET /conversations/:id`.
    Conversation,
    /// `GET /conversations`: the conversation ids and their patients' ids.
    ConversationList,
    /// Control socket `select_conversation` (status, patient language and summary).
    ConversationSelect,
    /// `GET …/messages`, socket `get_messages`.
    Messages,
    /// `GET …/actions`, socket `get_actions`.
    Actions,
    /// `GET …/summary`, socket `get_summary`.
    Summary,
    /// `GET …/medical-history`, socket `get_medical_history`, voice `request_medical_history`.
    MedicalHistory,
    /// `GET …/export`: the whole record as a file.
    Export,
    /// `GET /actions/:id`.
    Action,
    /// `GET /actions/:id/deliveries`: the webhook payloads carry the action's fields.
    ActionDeliveries,
    /// `GET /webhook-deliveries`: the page's delivery ids and their action ids.
    DeliveryList,
}

impl PhiRead {
    /// Every read, for documentation and tests.
    pub const ALL: [PhiRead; 13] = [
        PhiRead::Patient,
        PhiRead::PatientList,
        PhiRead::Conversation,
        PhiRead::ConversationList,
        PhiRead::ConversationSelect,
        PhiRead::Messages,
        PhiRead::Actions,
        PhiRead::Summary,
        PhiRead::MedicalHistory,
        PhiRead::Export,
        PhiRead::Action,
        PhiRead::ActionDeliveries,
        PhiRead::DeliveryList,
    ];

    /// The entry's `action`: `<record>.<what>.read`, or `.list`/`.export`/`.select`.
    pub fn action(self) -> &'static str {
        match self {
            PhiRead::Patient => "patient.read",
            PhiRead::PatientList => "patient.list",
            PhiRead::Conversation => "conversation.read",
            PhiRead::ConversationList => "conversation.list",
            PhiRead::ConversationSelect => "conversation.select",
            PhiRead::Messages => "conversation.messages.read",
            PhiRead::Actions => "conversation.actions.read",
            PhiRead::Summary => "conversation.summary.read",
            PhiRead::MedicalHistory => "conversation.medical_history.read",
            PhiRead::Export => "conversation.export",
            PhiRead::Action => "action.read",
            PhiRead::ActionDeliveries => "action.deliveries.read",
            PhiRead::DeliveryList => "webhook_delivery.list",
        }
    }

    /// The entry's `entity_type`: the kind of record `entity_id` names.
    pub fn entity_type(self) -> &'static str {
        match self {
            PhiRead::Patient | PhiRead::PatientList => "patient",
            PhiRead::Action | PhiRead::ActionDeliveries => "action",
            PhiRead::DeliveryList => "webhook_delivery",
            _ => "conversation",
        }
    }

    /// The entry for this read by `user_id` of `organization_id` from `remote`. `entity_id` is
    /// the record read (`*` for a listing); `record_ids` the other records the answer carried.
    pub fn entry(
        self,
        organization_id: &str,
        user_id: &str,
        remote: Option<IpAddr>,
        entity_id: &str,
        record_ids: Vec<String>,
    ) -> NewAuditEntry {
        NewAuditEntry {
            organization_id: organization_id.to_owned(),
            user_id: Some(user_id.to_owned()),
            action: self.action().to_owned(),
            entity_type: self.entity_type().to_owned(),
            entity_id: entity_id.to_owned(),
            record_ids,
            remote_addr: remote.map(|ip| ip.to_string()),
        }
    }
}

/// `ids` without repeats, first occurrence first (a listing's patients repeat across their
/// conversations).
pub fn distinct(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_has_its_own_action_name_prefixed_by_its_record() {
        let names: std::collections::HashSet<_> = PhiRead::ALL.iter().map(|r| r.action()).collect();
        assert_eq!(names.len(), PhiRead::ALL.len());
        for read in PhiRead::ALL {
            let prefix = format!("{}.", read.entity_type());
            assert!(read.action().starts_with(&prefix), "{read:?}");
        }
    }

    #[test]
    fn distinct_keeps_first_occurrences_in_order() {
        let ids = ["p2", "p1", "p2", "p3", "p1"].map(String::from);
        assert_eq!(distinct(ids), ["p2", "p1", "p3"]);
    }
}
