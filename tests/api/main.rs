//! One integration-test binary (links once): the real application on random
//! ports, real HTTP, the real embedded store.

mod cli;
mod admin;
mod batching;
mod contract;
mod demo;
mod durability;
mod eventbrite;
mod forwarding;
mod generic;
mod helpers;
mod oauth;
mod openapi;
mod operations;
mod prism;
mod store;
mod zoom;
