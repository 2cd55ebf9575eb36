//! HubSpot: the API client the forwarder calls.

mod client;
pub mod rate_limit;

pub use client::{CallError, ContactInput, CreateOutcome, HubSpotClient, Subscriber, named_inputs};

/// The HubSpot calls the gateway makes; `operation` label of the HubSpot metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    ContactsRead,
    ContactsUpsert,
    AttendanceCreate,
    EventsUpsert,
    EventsComplete,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::ContactsRead,
        Operation::ContactsUpsert,
        Operation::AttendanceCreate,
        Operation::EventsUpsert,
        Operation::EventsComplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::ContactsRead => "contacts_read",
            Operation::ContactsUpsert => "contacts_upsert",
            Operation::AttendanceCreate => "attendance_create",
            Operation::EventsUpsert => "events_upsert",
            Operation::EventsComplete => "complete",
        }
    }
}
