"""Rate-card drafts: one per plan, kept on the server until published or discarded. Each write is
audited with its actor in its own transaction; publishing goes through ``plan_version_publish``."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from billing.audit.services import audit_created, audit_deleted, audit_record, snapshot
from billing.catalog.models import Plan, RateCardDraft, RateCardVersion
from billing.catalog.services import plan_version_publish
from billing.common.errors import validation_error
from billing.common.sane import json_problem


def draft_get(*, plan: Plan) -> RateCardDraft | None:
    return RateCardDraft.objects.filter(plan=plan).first()


@transaction.atomic
def draft_save(*, plan: Plan, document: dict[str, Any], effective_from: str, actor: str) -> RateCardDraft:
    """Create or replace the plan's draft (saving the same draft again writes nothing). A draft may be
    invalid, but never hold what the database refuses (a NUL character)."""
    problem = json_problem({"effective_from": effective_from, **document})
    if problem is not None:
        raise validation_error({problem[0]: [problem[1]]}, "The draft holds text that cannot be stored.")
    draft = RateCardDraft.objects.select_for_update().filter(plan=plan).first()
    if draft is None:
        draft = RateCardDraft.objects.create(plan=plan, document=document, effective_from=effective_from,
                                             updated_by=actor)
        audit_created(draft, action="ratecard_draft.saved", actor=actor)
        return draft
    if draft.document == document and draft.effective_from == effective_from:
        return draft
    before = snapshot(draft)
    draft.document, draft.effective_from, draft.updated_by = document, effective_from, actor
    draft.save(update_fields=["document", "effective_from", "updated_by", "updated_at"])
    audit_record(action="ratecard_draft.saved", obj=draft, before=before, after=snapshot(draft), actor=actor)
    return draft


@transaction.atomic
def draft_discard(*, plan: Plan, actor: str) -> bool:
    """Delete the plan's draft; False when there was none."""
    draft = RateCardDraft.objects.select_for_update().filter(plan=plan).first()
    if draft is None:
        return False
    audit_deleted(draft, snapshot(draft), action="ratecard_draft.discarded", actor=actor)
    draft.delete()
    return True


@transaction.atomic
def draft_publish(*, plan: Plan, document: dict[str, Any], effective_from: str, actor: str) -> RateCardVersion:
    """Publish the editor's terms as a new version and drop the plan's draft, in one transaction: a
    refused version (``CatalogError``) keeps the draft as it was."""
    version, _ = plan_version_publish(plan=plan, data={"effective_from": effective_from, **document}, actor=actor)
    draft = RateCardDraft.objects.select_for_update().filter(plan=plan).first()
    if draft is not None:
        audit_deleted(draft, snapshot(draft), action="ratecard_draft.published", actor=actor)
        draft.delete()
    return version
