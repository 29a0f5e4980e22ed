"""The columns 0004 added to usage records and filled in are required from now on (a migration
of its own: PostgreSQL refuses to alter a table with trigger events pending from 0004's updates)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0004_price_book_ledger_metering'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usagerecord',
            name='hardware_type',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='nodes.hardwaretype'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='seconds',
            field=models.PositiveIntegerField(),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='units',
            field=models.PositiveSmallIntegerField(help_text='what is billed per hour: the GPUs, or one slot'),
        ),
    ]
