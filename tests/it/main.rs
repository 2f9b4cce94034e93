//! Integration tests: one binary, real PostgreSQL (and RabbitMQ), a database per test.

mod config_cli;
mod event_store;
mod helpers;
mod metrics;
mod openapi;
mod projectors;
mod read_side;
mod runtime;
mod security;
mod services;
mod shutdown;
mod tenants_api;
