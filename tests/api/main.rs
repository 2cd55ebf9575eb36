//! One integration-test binary (links once): the real application on random
//! ports, real HTTP, the real embedded store.

mod demo;
mod durability;
mod forwarding;
mod helpers;
mod operations;
mod store;
mod zoom;
