//! The broker's view of tenant queues, and their deletion.

use anyhow::Result;
use lapin::{
    Channel, Connection,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use tenantmq::domain::tenant::{QueueKind, TenantId};

use crate::Services;

/// Asks the broker about queues (passive declares) on one channel, reopened when needed: a passive declare of a
/// missing queue closes its channel.
pub struct QueueProbe<'a> {
    connection: &'a Connection,
    channel: Option<Channel>,
}

impl<'a> QueueProbe<'a> {
    pub fn new(connection: &'a Connection) -> Self {
        Self { connection, channel: None }
    }

    /// `(ready messages, consumers)` of `queue`, or `None` if it does not exist.
    pub async fn state(&mut self, queue: &str) -> Result<Option<(u32, u32)>> {
        let channel = match self.channel.take() {
            Some(open) if open.status().connected() => open,
            _ => self.connection.create_channel().await?,
        };
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await;
        self.channel = Some(channel);
        Ok(declared.ok().map(|queue| (queue.message_count(), queue.consumer_count())))
    }

    pub async fn close(mut self) {
        if let Some(channel) = self.channel.take().filter(|channel| channel.status().connected()) {
            let _ = channel.close(200, "done".into()).await;
        }
    }
}

/// `(ready messages, consumers)` of `queue`, or `None` if it does not exist, on a channel opened for the question.
pub async fn queue_state(connection: &Connection, queue: &str) -> Result<Option<(u32, u32)>> {
    let mut probe = QueueProbe::new(connection);
    let state = probe.state(queue).await;
    probe.close().await;
    state
}

/// Deletes the three queues (main, retry, dead letters) of each tenant; a queue already gone is no error.
pub(crate) async fn delete_tenant_queues(connection: &Connection, tenants: &[TenantId]) -> Result<()> {
    let channel = connection.create_channel().await?;
    for tenant in tenants {
        for kind in QueueKind::ALL {
            channel.queue_delete(kind.queue_name(*tenant).as_str().into(), QueueDeleteOptions::default()).await?;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// Queues declared for tenants no database knows (the bench's raw runs), deleted by [`DeclaredQueues::delete`]
/// or, failing that, when dropped.
pub struct DeclaredQueues {
    services: Services,
    tenants: Vec<TenantId>,
}

impl DeclaredQueues {
    pub fn of(services: &Services, tenants: &[TenantId]) -> Self {
        Self { services: services.clone(), tenants: tenants.to_vec() }
    }

    pub async fn delete(mut self) -> Result<()> {
        let tenants = std::mem::take(&mut self.tenants);
        delete_tenant_queues(&self.services.amqp().await?, &tenants).await
    }
}

impl Drop for DeclaredQueues {
    fn drop(&mut self) {
        if self.tenants.is_empty() {
            return;
        }
        let (services, tenants) = (self.services.clone(), std::mem::take(&mut self.tenants));
        crate::clean_up_on_a_runtime_of_its_own("tenant queues", async move {
            delete_tenant_queues(&services.amqp().await?, &tenants).await
        });
    }
}
