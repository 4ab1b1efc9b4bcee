"""The indexing state that matching keeps on every item it embeds (products and micro-videos).

Catalog's Product and matching's MicroVideo inherit it, so one ingest protocol (matching.services)
serves both. The protocol, in short:

- ``revision`` counts content changes; an edit bumps it and queues the item again.
- a worker *claims* an item before processing it (``claim_token`` = its task id, ``claimed_by`` = the
  worker instance, ``claim_until`` = the lease); a claim is taken only when none is held, the lease ran
  out, or the token is the same task redelivered after its worker died. Two workers therefore never process one item at once.
- the worker publishes its result only if it still holds the claim and the revision it read is still
  the item's revision (compare-and-set); otherwise it processes the new revision, or, if the item was
  deleted meanwhile, removes what it wrote.
- items left ``processing`` by a worker that stopped beating (or past their lease), and items
  ``queued`` for too long, are requeued by the reconciler (matching.reconcile), which the workers run
  periodically.
"""
from django.db import models
from django.utils import timezone


class IndexState(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    INDEXED = "indexed"
    FAILED = "failed"


class IndexedItem(models.Model):
    status = models.CharField(max_length=16, choices=IndexState.choices, default=IndexState.QUEUED)
    error = models.TextField(blank=True)
    model_version = models.ForeignKey(
        "matching.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.BinaryField(null=True, editable=False,
                                help_text="Encoder-level features the second stage reads (ml.serving.two_stage), "
                                          "made by model_version.")
    indexed_at = models.DateTimeField(null=True, blank=True)
    revision = models.PositiveIntegerField(default=1, editable=False,
                                           help_text="Content revision; an edit bumps it and queues the item again.")
    indexed_revision = models.PositiveIntegerField(null=True, blank=True, editable=False,
                                                   help_text="The revision the index holds.")
    queued_at = models.DateTimeField(null=True, blank=True, editable=False)
    claim_token = models.CharField(max_length=64, blank=True, editable=False,
                                   help_text="Task processing the item now (empty: none).")
    claimed_by = models.CharField(max_length=100, blank=True, editable=False,
                                  help_text="Worker instance holding the claim (see matching.models.WorkerHeartbeat).")
    claim_until = models.DateTimeField(null=True, blank=True, editable=False,
                                       help_text="End of the processing task's lease.")
    attempts = models.PositiveSmallIntegerField(default=0, editable=False,
                                                help_text="Claims taken since the item was last queued.")

    # Written by the ingest protocol alone (queryset updates), never by saving an instance: an edit made
    # from a copy read earlier must not undo what a worker published meanwhile.
    processing_fields = ("status", "error", "model_version", "detail", "indexed_at", "revision", "indexed_revision",
                         "queued_at", "claim_token", "claimed_by", "claim_until", "attempts")

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self._state.adding:
            if self.status == IndexState.QUEUED and self.queued_at is None:
                self.queued_at = timezone.now()
        elif kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [f.name for f in self._meta.concrete_fields
                                       if not f.primary_key and f.name not in self.processing_fields]
        super().save(*args, **kwargs)
