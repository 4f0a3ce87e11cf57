"""CDR simulator: customers from the IBM Telco table, behaviour over time, events to Kafka."""

from churn.simulator.simulator import Simulator, Step

__all__ = ["Simulator", "Step"]
