from decimal import Decimal

from billing.services import hourly_cost


def test_gpu_replicas_cost_gpus_times_price_times_replicas():
    assert hourly_cost(price_per_gpu_hour=Decimal("2.49"), gpus_per_container=8, replica_count=2) == Decimal("39.840000")


def test_a_cpu_only_replica_is_billed_as_one_slot_not_free():
    assert hourly_cost(price_per_gpu_hour=Decimal("0.02"), gpus_per_container=0, replica_count=3) == Decimal("0.060000")


def test_money_is_rounded_to_micro_units_half_up():
    assert hourly_cost(price_per_gpu_hour=Decimal("0.0000015"), gpus_per_container=1, replica_count=1) == Decimal("0.000002")
