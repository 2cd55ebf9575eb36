//! When HubSpot refuses a batch call as a whole (a 4xx), which of its inputs
//! is it refusing? One routine answers that for every batch call: attendance
//! `create`, contact `batch/read` and `batch/upsert`.
//!
//! Inputs the refusal names are set aside at once. A refusal that names none
//! is narrowed by halving, within a budget of calls logarithmic in the batch
//! size: one bad input costs about two calls per halving, and a refusal that
//! applies to every input (no half ever passes) stops at the budget instead
//! of costing a call per input.

use serde_json::Value;

use crate::hubspot::CallError;

/// Which inputs of a refused call the refusal is about.
pub enum Named {
    /// These (indices into the call's inputs); none: it does not say, so
    /// narrow it down.
    Inputs(Vec<usize>),
    /// The request as a whole (no such event, say): splitting cannot help.
    All,
}

/// Inputs that got the same final answer.
pub struct Piece<T, A> {
    pub items: Vec<T>,
    pub answer: Result<A, CallError>,
}

/// Calls `call` with `items`, narrowing refusals down as described above.
/// Every item ends up in exactly one piece. After a credential error nothing
/// more is sent: the rest carries that error too.
pub async fn isolate<T, A>(
    items: Vec<T>,
    mut call: impl AsyncFnMut(&[T]) -> Result<A, CallError>,
    named: impl Fn(u16, &Value, &[T]) -> Named,
) -> Vec<Piece<T, A>> {
    let mut pieces = Vec::new();
    if items.is_empty() {
        return pieces;
    }
    let mut budget = budget(items.len());
    let mut stack = vec![items];
    while let Some(chunk) = stack.pop() {
        if budget == 0 {
            pieces.push(Piece {
                items: chunk,
                answer: Err(CallError::Rejected {
                    status: 400,
                    message: "HubSpot refused the batch without naming the inputs, and narrowing \
                              it down stopped at its budget of calls"
                        .into(),
                    body: Value::Null,
                }),
            });
            continue;
        }
        budget -= 1;
        let answer = call(&chunk).await;
        match &answer {
            Err(CallError::Rejected { status, body, .. }) if chunk.len() > 1 => {
                match named(*status, body, &chunk) {
                    Named::All => pieces.push(Piece {
                        items: chunk,
                        answer,
                    }),
                    Named::Inputs(indices) if !indices.is_empty() && indices.len() < chunk.len() => {
                        let (refused, rest): (Vec<_>, Vec<_>) = chunk
                            .into_iter()
                            .enumerate()
                            .partition(|(i, _)| indices.contains(i));
                        pieces.push(Piece {
                            items: refused.into_iter().map(|(_, item)| item).collect(),
                            answer,
                        });
                        stack.push(rest.into_iter().map(|(_, item)| item).collect());
                    }
                    _ => {
                        let mut left = chunk;
                        let right = left.split_off(left.len() / 2);
                        stack.extend([left, right]);
                    }
                }
            }
            Err(err @ CallError::Credential(_)) => {
                let err = err.clone();
                pieces.extend(stack.drain(..).map(|items| Piece {
                    items,
                    answer: Err(err.clone()),
                }));
                pieces.push(Piece {
                    items: chunk,
                    answer,
                });
            }
            _ => pieces.push(Piece {
                items: chunk,
                answer,
            }),
        }
    }
    pieces
}

/// Calls allowed for a batch of `n`: the first, two per halving down to one
/// input, and two to spare.
fn budget(n: usize) -> usize {
    let halvings = usize::BITS - (n.max(1) - 1).leading_zeros();
    1 + 2 * halvings as usize + 2
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn refused() -> CallError {
        CallError::Rejected {
            status: 400,
            message: "bad".into(),
            body: Value::Null,
        }
    }

    /// Runs `isolate` over 0..n where the inputs in `bad` are refused (the
    /// whole call fails while it holds one); returns the calls made and which
    /// inputs ended refused.
    async fn run(n: usize, bad: impl Fn(usize) -> bool) -> (usize, Vec<usize>) {
        let calls = RefCell::new(0);
        let pieces = isolate(
            (0..n).collect::<Vec<usize>>(),
            async |chunk: &[usize]| {
                *calls.borrow_mut() += 1;
                if chunk.iter().any(|i| bad(*i)) {
                    Err(refused())
                } else {
                    Ok(())
                }
            },
            |_, _, _| Named::Inputs(Vec::new()),
        )
        .await;
        let mut refused: Vec<usize> = pieces
            .into_iter()
            .filter(|p| p.answer.is_err())
            .flat_map(|p| p.items)
            .collect();
        refused.sort_unstable();
        (calls.into_inner(), refused)
    }

    #[actix_web::test]
    async fn one_bad_input_costs_about_two_calls_per_halving() {
        let (calls, refused) = run(100, |i| i == 37).await;
        assert_eq!(refused, vec![37]);
        assert!(calls <= 1 + 2 * 7, "{calls} calls");
    }

    #[actix_web::test]
    async fn a_refusal_of_every_input_stops_at_a_logarithmic_budget() {
        let (calls, refused) = run(100, |_| true).await;
        assert_eq!(refused.len(), 100, "every input is refused, none lost");
        assert_eq!(calls, budget(100));
        assert!(calls < 20, "{calls} calls, not 2n-1 = 199");
    }

    #[actix_web::test]
    async fn named_inputs_are_set_aside_in_one_call() {
        let calls = RefCell::new(0);
        let pieces = isolate(
            vec![10, 11, 12, 13],
            async |chunk: &[i32]| {
                *calls.borrow_mut() += 1;
                if chunk.contains(&12) {
                    Err(refused())
                } else {
                    Ok(chunk.len())
                }
            },
            |_, _, chunk| Named::Inputs(chunk.iter().position(|i| *i == 12).into_iter().collect()),
        )
        .await;
        assert_eq!(calls.into_inner(), 2);
        let ok: Vec<i32> = pieces
            .iter()
            .filter(|p| p.answer.is_ok())
            .flat_map(|p| p.items.clone())
            .collect();
        assert_eq!(ok, vec![10, 11, 13]);
    }

    #[actix_web::test]
    async fn a_refusal_of_the_whole_request_is_not_split() {
        let calls = RefCell::new(0);
        let pieces = isolate(
            vec![1, 2, 3, 4],
            async |_: &[i32]| -> Result<(), CallError> {
                *calls.borrow_mut() += 1;
                Err(refused())
            },
            |_, _, _| Named::All,
        )
        .await;
        assert_eq!(calls.into_inner(), 1);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].items.len(), 4);
    }
}
