import factory

from nodes.models import Gpu, Node
from tests.factories import HardwareTypeFactory, LocationFactory


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node
        skip_postgeneration_save = True

    hostname = factory.Sequence(lambda n: f"gpu-node-{n}.example.net")
    location = factory.SubFactory(LocationFactory)
    hardware_type = factory.SubFactory(HardwareTypeFactory)
    status = Node.Status.ONLINE
    simulated = False

    @factory.post_generation
    def gpus(node, create, extracted, **kwargs):
        """`NodeFactory(gpus=8)` gives the node 8 free GPUs."""
        for index in range(extracted or 0):
            GpuFactory(node=node, index=index)


class GpuFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Gpu

    node = factory.SubFactory(NodeFactory)
    index = 0
    uuid = factory.Sequence(lambda n: f"GPU-{n:08d}-0000-0000-0000-000000000000")
    pci_bdf = factory.LazyAttribute(lambda g: f"0000:{0x18 + g.index:02x}:00.0")
    model = "NVIDIA H100 80GB HBM3"
    memory_mib = 81559
    numa_node = factory.LazyAttribute(lambda g: g.index // 4)
    nvlink_domain = "board-0"
