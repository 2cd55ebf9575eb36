//! Email → HubSpot contact id, through batch reads (and batch upserts for
//! contacts HubSpot does not have yet), remembered so each contact is looked
//! up once per process while it stays in use. A read or upsert HubSpot refuses as a whole is
//! narrowed down to the contacts it objects to, as `create` calls are.

use std::{cell::RefCell, collections::HashMap, num::NonZeroUsize};

use lru::LruCache;

use super::{
    Fate,
    isolate::{Named, Piece, isolate},
};
use crate::hubspot::{CallError, ContactInput, HubSpotClient, named_inputs};

/// HubSpot's batch limit for contact reads and upserts.
const LOOKUP_BATCH: usize = 100;
/// Remembered contacts; past this the least recently used is forgotten, so
/// the contacts of events under way stay known (each look-up spends HubSpot's
/// rate limit).
const CACHE_MAX: NonZeroUsize = NonZeroUsize::new(100_000).expect("not zero");

/// A contact the forwarder needs an id for.
#[derive(Clone, Copy)]
pub struct Wanted<'a> {
    pub email: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
}

pub struct Contacts {
    known: RefCell<LruCache<String, i64>>,
}

impl Default for Contacts {
    fn default() -> Self {
        Self::bounded(CACHE_MAX)
    }
}

/// Per email: its contact id, or what becomes of its records.
pub type Resolved = HashMap<String, Result<i64, Fate>>;

fn emails(chunk: &[Wanted<'_>]) -> Vec<String> {
    chunk.iter().map(|c| c.email.to_owned()).collect()
}

fn named_contacts(_status: u16, body: &serde_json::Value, chunk: &[Wanted<'_>]) -> Named {
    Named::Inputs(named_inputs(body, &emails(chunk)))
}

impl Contacts {
    /// An id per wanted email, or what should happen to its records.
    /// `Err` when HubSpot refuses the credential: nothing can proceed.
    pub async fn resolve(
        &self,
        hubspot: &HubSpotClient,
        wanted: &[Wanted<'_>],
        create_missing: bool,
    ) -> Result<Resolved, String> {
        let mut resolved = Resolved::new();
        let mut unknown: Vec<Wanted> = Vec::new();
        for contact in wanted {
            if resolved.contains_key(contact.email)
                || unknown.iter().any(|u| u.email == contact.email)
            {
                continue;
            }
            let known = self.known.borrow_mut().get(contact.email).copied();
            match known {
                Some(id) => {
                    resolved.insert(contact.email.to_owned(), Ok(id));
                }
                None => unknown.push(*contact),
            }
        }

        let mut absent: Vec<Wanted> = Vec::new();
        for chunk in unknown.chunks(LOOKUP_BATCH) {
            let pieces = isolate(
                chunk.to_vec(),
                async |part: &[Wanted<'_>]| hubspot.read_contacts(&emails(part)).await,
                named_contacts,
            )
            .await;
            for Piece { items, answer } in pieces {
                match answer {
                    Ok(found) => {
                        self.remember(&found);
                        for contact in items {
                            match found.get(contact.email) {
                                Some(id) => {
                                    resolved.insert(contact.email.to_owned(), Ok(*id));
                                }
                                None => absent.push(contact),
                            }
                        }
                    }
                    Err(err) => settle_all(&mut resolved, &items, refused(err, "look up"))?,
                }
            }
        }

        if !create_missing {
            let fate = Fate::Dead(
                "no HubSpot contact has this email and RELAY_CREATE_CONTACTS=false".into(),
            );
            settle_all(&mut resolved, &absent, fate)?;
            return Ok(resolved);
        }
        for chunk in absent.chunks(LOOKUP_BATCH) {
            let pieces = isolate(
                chunk.to_vec(),
                async |part: &[Wanted<'_>]| {
                    let inputs: Vec<ContactInput> = part
                        .iter()
                        .map(|c| ContactInput {
                            email: c.email,
                            first_name: c.first_name,
                            last_name: c.last_name,
                        })
                        .collect();
                    hubspot.upsert_contacts(&inputs).await
                },
                named_contacts,
            )
            .await;
            for Piece { items, answer } in pieces {
                match answer {
                    Ok(created) => {
                        self.remember(&created);
                        for contact in items {
                            let outcome =
                                created
                                    .get(contact.email)
                                    .copied()
                                    .ok_or_else(|| Fate::Retry {
                                        reason:
                                            "HubSpot's contact upsert did not return this contact"
                                                .into(),
                                        retry_after: None,
                                    });
                            resolved.insert(contact.email.to_owned(), outcome);
                        }
                    }
                    Err(err) => settle_all(&mut resolved, &items, refused(err, "create"))?,
                }
            }
        }
        Ok(resolved)
    }

    /// Forgets a contact id HubSpot no longer accepts (merged or deleted).
    pub fn forget(&self, id: i64) {
        let mut known = self.known.borrow_mut();
        let emails: Vec<String> = known
            .iter()
            .filter(|(_, known)| **known == id)
            .map(|(email, _)| email.clone())
            .collect();
        for email in emails {
            known.pop(&email);
        }
    }

    fn bounded(capacity: NonZeroUsize) -> Self {
        Self {
            known: RefCell::new(LruCache::new(capacity)),
        }
    }

    fn remember(&self, found: &HashMap<String, i64>) {
        let mut known = self.known.borrow_mut();
        for (email, id) in found {
            known.put(email.clone(), *id);
        }
    }
}

/// A refusal narrowed down to these contacts is theirs for good.
fn refused(err: CallError, what: &str) -> Fate {
    match err {
        CallError::Rejected {
            status, message, ..
        } => Fate::Dead(format!(
            "HubSpot refused to {what} the contact ({status}): {message}"
        )),
        other => Fate::from(other),
    }
}

fn settle_all(resolved: &mut Resolved, contacts: &[Wanted], fate: Fate) -> Result<(), String> {
    if let Fate::Paused(reason) = fate {
        return Err(reason);
    }
    for contact in contacts {
        resolved.insert(contact.email.to_owned(), Err(fate.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::Contacts;

    fn known(contacts: &Contacts, email: &str) -> Option<i64> {
        contacts.known.borrow_mut().get(email).copied()
    }

    #[test]
    fn a_contact_in_use_is_remembered_past_the_bound_while_the_least_used_goes() {
        let contacts = Contacts::bounded(NonZeroUsize::new(3).unwrap());
        let found = |email: &str, id| [(email.to_owned(), id)].into_iter().collect();
        contacts.remember(&found("a@example.com", 1));
        contacts.remember(&found("b@example.com", 2));
        contacts.remember(&found("c@example.com", 3));
        // `a` is looked up again (an active contact), `b` is not.
        assert_eq!(known(&contacts, "a@example.com"), Some(1));
        contacts.remember(&found("d@example.com", 4));
        contacts.remember(&found("e@example.com", 5));
        assert_eq!(known(&contacts, "a@example.com"), Some(1));
        assert_eq!(known(&contacts, "b@example.com"), None);
        assert_eq!(known(&contacts, "c@example.com"), None);
        assert_eq!(known(&contacts, "e@example.com"), Some(5));
    }

    #[test]
    fn a_forgotten_id_is_forgotten_under_every_email() {
        let contacts = Contacts::default();
        let found = [
            ("a@example.com", 7),
            ("b@example.com", 7),
            ("c@example.com", 8),
        ]
        .map(|(email, id)| (email.to_owned(), id))
        .into_iter()
        .collect();
        contacts.remember(&found);
        contacts.forget(7);
        assert_eq!(known(&contacts, "a@example.com"), None);
        assert_eq!(known(&contacts, "b@example.com"), None);
        assert_eq!(known(&contacts, "c@example.com"), Some(8));
    }
}
