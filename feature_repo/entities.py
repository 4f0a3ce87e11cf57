"""The one entity: a customer (subscriber account), joined on ``customer_id``."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A subscriber account; the key of CDRs, alerts and labels.",
)
