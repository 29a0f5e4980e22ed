"""The models' choices are protocol/vocabulary.py's sets, and the VM the plane names for a replica
passes the agent's name rule."""

import pytest

from accounts.models import Membership
from cloud.deployments.models import Deployment, LogLine, Replica
from cloud.deployments.services.agents import replica_spec
from protocol import vocabulary as v
from nodes.models import Node
from tests.deployments.factories import deployment_for
from tests.factories import TenantFactory


@pytest.mark.parametrize(("choices", "values"), [
    (Deployment.Status, v.DEPLOYMENT_STATUSES), (Replica.State, v.REPLICA_STATES), (Replica.Desired, v.DESIRED_STATES),
    (LogLine.Stream, v.LOG_STREAMS), (Membership.Role, v.ROLES), (Node.Status, v.NODE_STATUSES),
])
def test_model_choices_are_the_vocabulary(choices, values):
    assert choices.values == list(values)
    # Members and labels as when each was a class of its own: Replica.State.RUNNING, "Running".
    assert [(m.name, m.label) for m in choices] == [(value.upper(), value.capitalize()) for value in values]
    assert choices.__qualname__.endswith("." + choices.__name__)


@pytest.mark.django_db
def test_the_plane_names_each_vm_by_the_agents_rule():
    deployment = deployment_for(TenantFactory(), replica_count=3)
    names = [replica_spec(r, gpu_bdfs=[]).name for r in Replica.objects.filter(deployment=deployment)]
    assert len(names) == 3 and all(v.is_vm_name(name) for name in names), names
