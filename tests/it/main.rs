//! Integration tests: one binary, real PostgreSQL (and RabbitMQ), a database per test.

mod adversity;
mod audit;
mod config_cli;
mod dead_letters;
mod deploy;
mod event_store;
mod faults;
mod fidelity;
mod first_hour;
mod generated_client;
mod helpers;
mod metrics;
mod openapi;
mod processes;
mod projectors;
mod proxy;
mod read_side;
mod runtime;
mod scale_out;
mod security;
mod services;
mod several_instances;
mod shutdown;
mod tenants_api;
mod traces;
