//! The row id a message is stored under, derived from the AMQP `message_id` it arrived with, so that every
//! delivery of one message (a redelivery, a retry copy, a replay from the dead letters) finds the same row.

use uuid::Uuid;

use super::tenant::TenantId;

/// The namespace of the UUIDv5 row ids of messages whose `message_id` is not a UUID.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_0c2e_9a57_4b1e_8d3c_5e2a_71f4_c0b9);

/// The row id of a message that arrived with `message_id`:
/// - a `message_id` that is a UUID is the id;
/// - any other non-empty `message_id` gives UUIDv5 of `<tenant id>/<message_id>` in [`MESSAGE_ID_NAMESPACE`];
/// - without a `message_id` nothing identifies the message across deliveries: it is at-least-once, and its id
///   is a fresh UUIDv7 stamped as version 8 (time-ordered still), so the row shows it.
pub fn row_id(tenant: TenantId, message_id: Option<&str>) -> Uuid {
    match message_id.filter(|id| !id.is_empty()) {
        Some(message_id) => Uuid::try_parse(message_id).unwrap_or_else(|_| named_row_id(tenant, message_id)),
        None => uuid::Builder::from_custom_bytes(Uuid::now_v7().into_bytes()).into_uuid(),
    }
}

fn named_row_id(tenant: TenantId, message_id: &str) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(MESSAGE_ID_NAMESPACE.as_bytes());
    hasher.update(format!("{tenant}/{message_id}").as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_is_its_own_id_and_a_name_the_same_v5_id_every_time_per_tenant() {
        let tenant = TenantId::generate();
        let other = TenantId::generate();
        let uuid = Uuid::now_v7();
        assert_eq!(row_id(tenant, Some(&uuid.to_string())), uuid);
        let named = row_id(tenant, Some("order-17"));
        assert_eq!(named, row_id(tenant, Some("order-17")));
        assert_eq!(named.get_version_num(), 5);
        assert_ne!(named, row_id(other, Some("order-17")), "names are per tenant");
    }

    /// Pinned: rows already stored carry these ids, so the namespace and the name's form may never change
    /// (the same as Python's `uuid.uuid5(namespace, "<tenant id>/order-17")`).
    #[test]
    fn a_named_id_is_the_standard_uuid_v5_of_tenant_slash_name() {
        let tenant = TenantId::from_uuid(Uuid::from_u128(0x0192_f4c0_5c1a_7b3e_8d4f_1a2b_3c4d_5e6f));
        let expected = Uuid::from_u128(0xe536_f505_6329_59fe_92e8_dad4_a9fe_028d);
        assert_eq!(row_id(tenant, Some("order-17")), expected);
    }

    #[test]
    fn without_a_message_id_every_delivery_gets_a_fresh_version_8_id() {
        let tenant = TenantId::generate();
        for missing in [None, Some("")] {
            let id = row_id(tenant, missing);
            assert_eq!(id.get_version_num(), 8);
            assert_ne!(id, row_id(tenant, missing));
        }
    }
}
