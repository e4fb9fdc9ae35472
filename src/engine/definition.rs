//! The table's definition beside an export (`_TABLE.json`): written into
//! the run's export folder before the unit commits, so that every committed
//! export holds the definition its rows were exported under, and a restore
//! can make the table as it was.

use crate::contract::message::WorkMessage;
use crate::engine::layout;
use crate::error::UnitError;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Warehouse;

/// Reads the unit's table definition from the warehouse and writes it into
/// the unit's export folder of this run: one warehouse read, one write.
pub async fn write_beside_export(
    warehouse: &dyn Warehouse,
    msg: &WorkMessage,
    store: &dyn ObjectStore,
) -> Result<(), UnitError> {
    let definition = warehouse.definition(&msg.source).await?;
    let body = serde_json::to_vec_pretty(&definition).expect("definitions serialize");
    store
        .write(
            &layout::export_definition(&msg.source, &msg.run_id),
            &body,
            None,
        )
        .await
        .map_err(|e| UnitError::io("writing the table's definition", e))
}
