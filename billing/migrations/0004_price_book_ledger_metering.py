"""The price book, meters, the ledger, daily sums, funds notices and metering runs (issue 18).

Data steps, in order:
- usage records written before this get their new columns (seconds, units, hardware, location);
- the price book starts from what deployments were actually created at: each hardware type's
  price history is read off its deployments' `price_per_gpu_hour` (locked in at creation), so
  no second is ever re-priced, and the list price joins it from now if it moved since;
- each tenant's `balance` becomes an opening credit (accounts 0002 then drops the column), and
  any usage records already there become charges after it, with meters and daily sums, so
  every record has its charge and nothing is metered twice.
"""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal

import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


EPOCH = datetime(2000, 1, 1, tzinfo=dt_timezone.utc)
MONEY = Decimal("0.000001")


def _money(value) -> Decimal:
    return Decimal(value).quantize(MONEY, rounding=ROUND_HALF_UP)


def _price_history(Price, HardwareType, Deployment, now):
    for hw in HardwareType.objects.order_by("pk"):
        entries: list[tuple[datetime, Decimal]] = []
        for created_at, price in (Deployment.objects.filter(hardware_type=hw).order_by("created_at")
                                  .values_list("created_at", "price_per_gpu_hour")):
            if not entries:
                entries.append((EPOCH, price))
            elif entries[-1][1] != price:
                since = created_at.replace(microsecond=0)
                if since <= entries[-1][0]:
                    entries[-1] = (entries[-1][0], price)
                else:
                    entries.append((since, price))
        if not entries:
            entries.append((EPOCH, hw.price_per_gpu_hour))
        elif entries[-1][1] != hw.price_per_gpu_hour:
            entries.append((max(now, entries[-1][0] + timedelta(seconds=1)), hw.price_per_gpu_hour))
        Price.objects.bulk_create([
            Price(hardware_type=hw, location=None, price_per_unit_hour=price, effective_from=since,
                  reason="price book started from the prices deployments were created at")
            for since, price in entries
        ])


def forwards(apps, schema_editor):
    Tenant = apps.get_model("accounts", "Tenant")
    Deployment = apps.get_model("deployments", "Deployment")
    HardwareType = apps.get_model("nodes", "HardwareType")
    Price = apps.get_model("billing", "Price")
    UsageRecord = apps.get_model("billing", "UsageRecord")
    UsageDaily = apps.get_model("billing", "UsageDaily")
    LedgerEntry = apps.get_model("billing", "LedgerEntry")
    Meter = apps.get_model("billing", "Meter")
    now = datetime.now(dt_timezone.utc).replace(microsecond=0)

    records = list(UsageRecord.objects.select_related("deployment", "replica__node").order_by("period_start", "id"))
    for record in records:
        record.seconds = int((record.period_end - record.period_start).total_seconds())
        record.units = record.gpus if record.gpus > 0 else 1
        record.hardware_type_id = record.deployment.hardware_type_id
        record.location_id = record.replica.node.location_id if record.replica.node_id else None
        record.save(update_fields=["seconds", "units", "hardware_type", "location"])

    _price_history(Price, HardwareType, Deployment, now)

    heads: dict[int, tuple[int, Decimal]] = {}

    def post(tenant_id, kind, amount, reason, actor_name, usage_record=None, key=None):
        seq, balance = heads.get(tenant_id, (0, Decimal("0")))
        seq, balance = seq + 1, balance + amount
        heads[tenant_id] = (seq, balance)
        LedgerEntry.objects.create(tenant_id=tenant_id, seq=seq, kind=kind, amount=amount, balance_after=balance,
                                   usage_record=usage_record, idempotency_key=key, actor_name=actor_name,
                                   reason=reason, created_at=now)

    for tenant in Tenant.objects.order_by("pk"):
        opening = _money(tenant.balance)
        if opening > 0:
            post(tenant.pk, "credit", opening, "opening balance (Tenant.balance before the ledger)", "migration",
                 key="opening-balance")
        elif opening < 0:
            post(tenant.pk, "charge", opening, "opening balance (Tenant.balance before the ledger)", "migration",
                 key="opening-balance")

    meters: dict[int, dict] = {}
    for record in records:
        post(record.tenant_id, "charge", -record.amount, "usage metered before the ledger", "migration",
             usage_record=record)
        meter = meters.setdefault(record.replica_id, {
            "tenant_id": record.tenant_id, "deployment_id": record.deployment_id, "metered_to": record.period_end,
            "ups": Decimal("0"), "seconds": 0, "amount": Decimal("0"),
            "closed": record.replica.state in ("stopped", "failed", "lost"),
        })
        meter["metered_to"] = max(meter["metered_to"], record.period_end)
        meter["ups"] += record.price_per_unit_hour * record.units * record.seconds
        meter["seconds"] += record.seconds
        meter["amount"] += record.amount
        daily, _ = UsageDaily.objects.get_or_create(
            deployment_id=record.deployment_id, day=record.period_start.astimezone(dt_timezone.utc).date(),
            location_id=record.location_id,
            defaults={"tenant_id": record.tenant_id, "hardware_type_id": record.hardware_type_id})
        daily.amount += record.amount
        daily.seconds += record.seconds
        daily.gpu_seconds += record.seconds * record.gpus
        daily.records += 1
        daily.save()
    Meter.objects.bulk_create([
        Meter(replica_id=replica_id, tenant_id=m["tenant_id"], deployment_id=m["deployment_id"],
              metered_to=m["metered_to"], unit_price_seconds=m["ups"], seconds=m["seconds"], amount=m["amount"],
              closed=m["closed"])
        for replica_id, m in meters.items()
    ])


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
        ('billing', '0003_incarnations'),
        ('deployments', '0004_incarnations'),
        ('nodes', '0002_incarnations'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='MeterRun',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('now', models.DateTimeField(help_text="the pass's clock: intervals were closed up to here")),
                ('meters', models.PositiveIntegerField(default=0)),
                ('records', models.PositiveIntegerField(default=0)),
                ('amount', models.DecimalField(decimal_places=6, default=0, max_digits=16)),
                ('duration_ms', models.PositiveIntegerField(default=0)),
                ('finished_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['-id'],
            },
        ),
        migrations.AlterModelOptions(
            name='usagerecord',
            options={'ordering': ['period_start', 'id']},
        ),
        migrations.RenameField(
            model_name='usagerecord',
            old_name='price_per_gpu_hour',
            new_name='price_per_unit_hour',
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='hardware_type',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='nodes.hardwaretype'),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='location',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='nodes.location'),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='seconds',
            field=models.PositiveIntegerField(null=True),
        ),
        migrations.AddField(
            model_name='usagerecord',
            name='units',
            field=models.PositiveSmallIntegerField(null=True, help_text='what is billed per hour: the GPUs, or one slot'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='deployment',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='usage_records', to='deployments.deployment'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='gpus',
            field=models.PositiveSmallIntegerField(help_text='GPUs of the replica (0 on CPU-only hardware)'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='tenant',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='usage_records', to='accounts.tenant'),
        ),
        migrations.CreateModel(
            name='UsageDaily',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('amount', models.DecimalField(decimal_places=6, default=0, max_digits=16)),
                ('seconds', models.BigIntegerField(default=0)),
                ('gpu_seconds', models.BigIntegerField(default=0)),
                ('records', models.PositiveIntegerField(default=0)),
                ('deployment', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='deployments.deployment')),
                ('hardware_type', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='nodes.hardwaretype')),
                ('location', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='nodes.location')),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='accounts.tenant')),
            ],
            options={
                'ordering': ['day', 'deployment_id'],
            },
        ),
        migrations.CreateModel(
            name='BillingReport',
            fields=[
            ],
            options={
                'verbose_name': 'billing report',
                'verbose_name_plural': 'billing report',
                'proxy': True,
                'indexes': [],
                'constraints': [],
            },
            bases=('billing.usagedaily',),
        ),
        migrations.CreateModel(
            name='FundsNotice',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('low_balance', 'Low Balance'), ('exhausted', 'Exhausted')], max_length=12)),
                ('cause', models.CharField(blank=True, help_text='balance or spend_limit', max_length=12)),
                ('message', models.CharField(max_length=500)),
                ('opened_at', models.DateTimeField()),
                ('stop_at', models.DateTimeField(blank=True, null=True)),
                ('emailed_to', models.JSONField(blank=True, default=list)),
                ('closed_at', models.DateTimeField(blank=True, null=True)),
                ('outcome', models.CharField(blank=True, choices=[('stopped', 'Stopped'), ('resolved', 'Resolved')], max_length=10)),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='funds_notices', to='accounts.tenant')),
            ],
            options={
                'ordering': ['-opened_at'],
                'constraints': [models.UniqueConstraint(condition=models.Q(('closed_at__isnull', True)), fields=('tenant', 'kind'), name='funds_notice_one_open_per_kind')],
            },
        ),
        migrations.CreateModel(
            name='LedgerEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('seq', models.PositiveIntegerField()),
                ('kind', models.CharField(choices=[('credit', 'Credit'), ('charge', 'Charge'), ('refund', 'Refund')], max_length=6)),
                ('amount', models.DecimalField(decimal_places=6, max_digits=16)),
                ('balance_after', models.DecimalField(decimal_places=6, max_digits=16)),
                ('idempotency_key', models.CharField(blank=True, max_length=200, null=True)),
                ('actor_name', models.CharField(max_length=150)),
                ('reason', models.CharField(max_length=500)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='ledger_entries', to='accounts.tenant')),
                ('usage_record', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='ledger_entry', to='billing.usagerecord')),
            ],
            options={
                'verbose_name_plural': 'ledger entries',
                'ordering': ['tenant_id', 'seq'],
                'indexes': [models.Index(fields=['created_at'], name='ledger_created_idx')],
                'constraints': [models.UniqueConstraint(fields=('tenant', 'seq'), name='ledger_unique_tenant_seq'), models.UniqueConstraint(condition=models.Q(('idempotency_key__isnull', False)), fields=('tenant', 'idempotency_key'), name='ledger_unique_tenant_key'), models.CheckConstraint(condition=models.Q(models.Q(('amount__lte', 0), ('kind', 'charge')), models.Q(('amount__gt', 0), ('kind__in', ('credit', 'refund'))), _connector='OR'), name='ledger_sign_matches_kind'), models.CheckConstraint(condition=models.Q(('usage_record__isnull', True), ('kind', 'charge'), _connector='OR'), name='ledger_usage_is_a_charge')],
            },
        ),
        migrations.CreateModel(
            name='Meter',
            fields=[
                ('replica', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, primary_key=True, related_name='meter', serialize=False, to='deployments.replica')),
                ('metered_to', models.DateTimeField()),
                ('unit_price_seconds', models.DecimalField(decimal_places=4, default=0, max_digits=28)),
                ('seconds', models.BigIntegerField(default=0)),
                ('amount', models.DecimalField(decimal_places=6, default=0, max_digits=16)),
                ('closed', models.BooleanField(default=False)),
                ('opened_at', models.DateTimeField(auto_now_add=True)),
                ('deployment', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='meters', to='deployments.deployment')),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='accounts.tenant')),
            ],
            options={
                'indexes': [models.Index(condition=models.Q(('closed', False)), fields=['replica'], name='meter_open_idx'), models.Index(condition=models.Q(('closed', False)), fields=['tenant'], name='meter_open_tenant_idx')],
            },
        ),
        migrations.CreateModel(
            name='Price',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('price_per_unit_hour', models.DecimalField(decimal_places=4, help_text='USD per GPU-hour (per replica-hour on CPU-only hardware)', max_digits=10, validators=[django.core.validators.MinValueValidator(0)])),
                ('effective_from', models.DateTimeField(help_text='UTC, whole seconds; never in the past when added')),
                ('reason', models.CharField(blank=True, max_length=300)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('hardware_type', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='prices', to='nodes.hardwaretype')),
                ('location', models.ForeignKey(blank=True, help_text='empty: every location without a price of its own', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='prices', to='nodes.location')),
            ],
            options={
                'ordering': ['hardware_type_id', 'location_id', '-effective_from'],
                'constraints': [models.UniqueConstraint(fields=('hardware_type', 'location', 'effective_from'), name='price_unique_hardware_location_from', nulls_distinct=False)],
            },
        ),
        migrations.AddIndex(
            model_name='usagedaily',
            index=models.Index(fields=['tenant', 'day'], name='usage_daily_tenant_day_idx'),
        ),
        migrations.AddIndex(
            model_name='usagedaily',
            index=models.Index(fields=['day'], name='usage_daily_day_idx'),
        ),
        migrations.AddConstraint(
            model_name='usagedaily',
            constraint=models.UniqueConstraint(fields=('deployment', 'day', 'location'), name='usage_daily_unique_deployment_day_location', nulls_distinct=False),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
