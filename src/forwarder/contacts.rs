//! Email → HubSpot contact id, through batch reads (and batch upserts for
//! contacts HubSpot does not have yet), remembered so each contact is looked
//! up once per process.

use std::{cell::RefCell, collections::HashMap};

use futures_util::future::join_all;

use super::Fate;
use crate::hubspot::{CallError, ContactInput, HubSpotClient};

/// HubSpot's batch limit for contact reads and upserts.
const LOOKUP_BATCH: usize = 100;
/// Remembered contacts; the map starts over when full, which costs look-ups only.
const CACHE_MAX: usize = 100_000;

/// A contact the forwarder needs an id for.
pub struct Wanted<'a> {
    pub email: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
}

#[derive(Default)]
pub struct Contacts {
    known: RefCell<HashMap<String, i64>>,
}

impl Contacts {
    /// An id per wanted email, or what should happen to its records.
    /// `Err` when HubSpot refuses the credential: nothing can proceed.
    pub async fn resolve(
        &self,
        hubspot: &HubSpotClient,
        wanted: &[Wanted<'_>],
        create_missing: bool,
    ) -> Result<HashMap<String, Result<i64, Fate>>, String> {
        let mut resolved: HashMap<String, Result<i64, Fate>> = HashMap::new();
        let mut unknown: Vec<&Wanted> = Vec::new();
        for contact in wanted {
            if resolved.contains_key(contact.email)
                || unknown.iter().any(|u| u.email == contact.email)
            {
                continue;
            }
            match self.known.borrow().get(contact.email) {
                Some(id) => {
                    resolved.insert(contact.email.to_owned(), Ok(*id));
                }
                None => unknown.push(contact),
            }
        }

        // All look-ups at once: the rate limiter, not latency, sets the pace.
        let lookups = unknown.chunks(LOOKUP_BATCH).map(|chunk| async move {
            let emails: Vec<String> = chunk.iter().map(|c| c.email.to_owned()).collect();
            (chunk, hubspot.read_contacts(&emails).await)
        });
        let mut absent: Vec<&Wanted> = Vec::new();
        for (chunk, answer) in join_all(lookups).await {
            match answer {
                Ok(found) => {
                    self.remember(&found);
                    for contact in chunk {
                        match found.get(contact.email) {
                            Some(id) => {
                                resolved.insert(contact.email.to_owned(), Ok(*id));
                            }
                            None => absent.push(contact),
                        }
                    }
                }
                Err(err) => settle_all(&mut resolved, chunk, Fate::from(err))?,
            }
        }

        if !create_missing {
            for contact in absent {
                resolved.insert(
                    contact.email.to_owned(),
                    Err(Fate::Dead(
                        "no HubSpot contact has this email and RELAY_CREATE_CONTACTS=false".into(),
                    )),
                );
            }
            return Ok(resolved);
        }
        // A batch HubSpot refuses as a whole (one malformed email) is split
        // until the contact it objects to stands alone.
        let mut queue: Vec<&[&Wanted]> = absent.chunks(LOOKUP_BATCH).collect();
        while let Some(chunk) = queue.pop() {
            let inputs: Vec<ContactInput> = chunk
                .iter()
                .map(|c| ContactInput {
                    email: c.email,
                    first_name: c.first_name,
                    last_name: c.last_name,
                })
                .collect();
            match hubspot.upsert_contacts(&inputs).await {
                Ok(created) => {
                    self.remember(&created);
                    for contact in chunk {
                        let outcome =
                            created
                                .get(contact.email)
                                .copied()
                                .ok_or_else(|| Fate::Retry {
                                    reason: "HubSpot's contact upsert did not return this contact"
                                        .into(),
                                    retry_after: None,
                                });
                        resolved.insert(contact.email.to_owned(), outcome);
                    }
                }
                Err(CallError::Rejected { .. }) if chunk.len() > 1 => {
                    let (left, right) = chunk.split_at(chunk.len() / 2);
                    queue.extend([left, right]);
                }
                Err(CallError::Rejected {
                    status, message, ..
                }) => settle_all(
                    &mut resolved,
                    chunk,
                    Fate::Dead(format!(
                        "HubSpot refused to create the contact ({status}): {message}"
                    )),
                )?,
                Err(err) => settle_all(&mut resolved, chunk, Fate::from(err))?,
            }
        }
        Ok(resolved)
    }

    /// Forgets a contact id HubSpot no longer accepts (merged or deleted).
    pub fn forget(&self, id: i64) {
        self.known.borrow_mut().retain(|_, known| *known != id);
    }

    fn remember(&self, found: &HashMap<String, i64>) {
        let mut known = self.known.borrow_mut();
        if known.len() + found.len() > CACHE_MAX {
            known.clear();
        }
        known.extend(found.iter().map(|(email, id)| (email.clone(), *id)));
    }
}

fn settle_all(
    resolved: &mut HashMap<String, Result<i64, Fate>>,
    contacts: &[&Wanted],
    fate: Fate,
) -> Result<(), String> {
    if let Fate::Paused(reason) = fate {
        return Err(reason);
    }
    for contact in contacts {
        resolved.insert(contact.email.to_owned(), Err(fate.clone()));
    }
    Ok(())
}
