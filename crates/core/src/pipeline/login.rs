//! The built-in pipeline: the Fetch Rewards exercise's login events into
//! `user_logins`, as 0.4.0 loaded them. Shipped as a row of
//! `fetch_etl.pipeline_defs` (sql/bootstrap.sql) with this column list (a
//! contract test checks they are the same text) and run by the general
//! engine like any other pipeline.

use super::grammar::parse_columns;
use super::plan::{Definition, Idempotency};
use crate::contract::RejectReason;

/// Its name (`sqs_drain(queue_url)` without a pipeline runs it).
pub const LOGIN: &str = "login";

/// Its column list. The fields' type checks run in the exercise's field
/// order (user_id, device_type, ip, locale, device_id, app_version), as
/// 0.4.0's did; the three `sqs_*` columns are filled when the table has them.
pub const LOGIN_COLUMNS: &str = "user_id text PATH '$.user_id' STRING REQUIRED,
device_type text PATH '$.device_type' STRING,
masked_ip PATH '$.ip' STRING MASKED,
locale text PATH '$.locale' STRING,
masked_device_id PATH '$.device_id' STRING MASKED,
app_version PATH '$.app_version' STRING USING version,
create_date MESSAGE sent_date,
sqs_message_id MESSAGE message_id IF EXISTS,
sqs_sent_at MESSAGE sent_at IF EXISTS,
sqs_attributes MESSAGE attributes IF EXISTS";

/// The exercise's DDL for `user_logins`, used when the drain's target table
/// does not exist.
pub const LOGIN_DDL: &str =
    "user_id varchar(128), device_type varchar(32), masked_ip varchar(256), \
     masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date";

/// The login pipeline's definition.
pub fn login() -> Definition {
    Definition {
        name: LOGIN.to_string(),
        // (its catalog id is the first; its keys are message ids)
        id: 1,
        columns: parse_columns(LOGIN_COLUMNS).expect("the login pipeline's columns parse"),
        rows: None,
        idempotency: Idempotency::MessageId,
        unrecognized: RejectReason::NotLoginEvent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::grammar::print_columns;

    /// The catalog stores column lists as `print_columns` writes them; the
    /// login pipeline's is shipped that way.
    #[test]
    fn the_login_columns_are_in_the_catalog_s_form() {
        assert_eq!(print_columns(&login().columns), LOGIN_COLUMNS);
    }
}
