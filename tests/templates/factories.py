import factory

from templates.models import Template


class TemplateFactory(factory.django.DjangoModelFactory):
    """A global template unless `tenant=` is given."""

    class Meta:
        model = Template

    tenant = None
    slug = factory.Sequence(lambda n: f"tpl-{n}")
    name = factory.LazyAttribute(lambda t: t.slug.title())
    image = "ollama/ollama:latest"
    default_env = factory.LazyFunction(dict)
    traffic_port = 11434
    min_gpus = 0
    max_gpus = 8
