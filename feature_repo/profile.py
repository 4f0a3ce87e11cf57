"""``customer_profile``: plan and account facts of each customer, every version kept.

The source is the profile history (``churn.profiles``: the lake's Delta table
``profile_history``, one row per version of a customer's profile, appended by
``churn profiles load`` and ``churn features apply``), with ``updated_at`` as the
timestamp: a point-in-time join reads the version in force at each observation
time, and materialization serves the newest. The fields follow the
``customer_profile`` contract (``schemas/customer_profile.schema.json``), booleans as 0/1.

The churn label is deliberately *not* here: a label stored as a feature leaks into training.
Nor is gender: a protected attribute has no place in deciding whom to treat how.
"""

from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.data_format import DeltaFormat
from feast.types import Float64, Int64, String

from churn import storage
from churn.config import get_settings
from churn.lake import LakePaths
from feature_repo.entities import customer

PROFILE_FIELDS = [
    Field(name="tenure_months", dtype=Int64),
    Field(name="monthly_charges", dtype=Float64),
    Field(name="total_charges", dtype=Float64),
    Field(name="senior_citizen", dtype=Int64),
    Field(name="has_partner", dtype=Int64),
    Field(name="has_dependents", dtype=Int64),
    Field(name="phone_service", dtype=Int64),
    Field(name="multiple_lines", dtype=Int64),
    Field(name="internet_service", dtype=String),
    Field(name="online_security", dtype=Int64),
    Field(name="online_backup", dtype=Int64),
    Field(name="device_protection", dtype=Int64),
    Field(name="tech_support", dtype=Int64),
    Field(name="streaming_tv", dtype=Int64),
    Field(name="streaming_movies", dtype=Int64),
    Field(name="contract", dtype=String),
    Field(name="paperless_billing", dtype=Int64),
    Field(name="payment_method", dtype=String),
    # kept and served with the profile; the model does not read them
    Field(name="plan", dtype=String),
    Field(name="activation_date", dtype=String),
    Field(name="contract_end_date", dtype=String),
]

profile_source = FileSource(
    name="customer_profile_source",
    **storage.feast_file_source(get_settings(), LakePaths.of(get_settings()).profile_history),
    file_format=DeltaFormat(),
    timestamp_field="updated_at",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=3650),
    schema=PROFILE_FIELDS,
    source=profile_source,
    online=True,
    description="Plan and account facts of each customer, as of each version's updated_at (the profile history).",
)
