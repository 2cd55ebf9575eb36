//! One integration-test binary (links once): the real application on random
//! ports, real HTTP, the real embedded store.

mod admin;
mod batching;
mod cli;
mod cluster;
mod completion;
mod contract;
mod crash;
mod demo;
mod disk;
mod docs;
mod durability;
mod eventbrite;
mod forwarding;
mod generic;
mod helpers;
mod hostile;
mod layers;
mod oauth;
mod observability;
mod openapi;
mod operations;
mod pg;
mod pg_pooler;
mod pg_restart;
mod pg_tls;
mod pg_upgrade;
mod prism;
mod replicas;
mod startup;
mod store;
mod zoom;
