"""The review queue: staff go through turns one at a time and label each with a key press.

One page in the admin (it is where staff already work): the filters, then the turn the queue
holds for this reviewer with its conversation, the user's feedback and the trace link, and the
label buttons. Each decision stores the label (MLflow gets it through the delivery worker) and
shows the next turn.
"""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse

from chat import tracing
from chat.models import Turn
from feedback import selectors, services
from feedback.exceptions import TurnNotRateable
from feedback.forms import ReviewFilterForm, ReviewLabelForm

SKIPPED = "review_skipped"
SKIPPED_KEPT = 500


def review_page(modeladmin, request: HttpRequest) -> HttpResponse:
    if not modeladmin.has_label_permission(request):
        raise PermissionDenied
    filter_form = ReviewFilterForm(request.GET if "signal" in request.GET else None)
    filters = filter_form.filters()
    if "restart" in request.GET:
        request.session[SKIPPED] = []
        services.review_release(reviewer=request.user)
        query = request.GET.copy()
        del query["restart"]
        return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
    skipped: list[int] = request.session.get(SKIPPED, [])

    if request.method == "POST":
        form = ReviewLabelForm(request.POST)
        if form.is_valid():
            _decide(request, form, skipped)
            return HttpResponseRedirect(request.get_full_path())
        messages.error(request, "That decision could not be read; choose again.")

    turn = services.review_claim_next(reviewer=request.user, filters=filters, skip=skipped)
    labelled, total = selectors.review_progress(filters=filters)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Review queue",
        "opts": modeladmin.model._meta,
        "filter_form": filter_form,
        "turn": turn,
        "labelled": labelled,
        "total": total,
        "skipped": len(skipped),
        "query": request.GET.urlencode(),
        "claim_minutes": round(settings.REVIEW_CLAIM_S / 60),
    }
    if turn is not None:
        context.update(selectors.review_context(turn=turn))
        context["trace_link"] = tracing.trace_link_html(turn.trace_id)
        context["form"] = ReviewLabelForm(initial={"turn": turn.pk})
        context["lifecycle"] = selectors.turn_lifecycles(turn_ids=[turn.pk]).get(turn.pk)
    return TemplateResponse(request, "admin/feedback/review.html", context)


def _decide(request: HttpRequest, form: ReviewLabelForm, skipped: list[int]) -> None:
    turn = get_object_or_404(Turn, pk=form.cleaned_data["turn"])
    decision = form.cleaned_data["decision"]
    if decision == "skip":
        services.review_release(reviewer=request.user, turn=turn)
        request.session[SKIPPED] = [*skipped, turn.pk][-SKIPPED_KEPT:]
        return
    try:
        services.review_label(
            reviewer=request.user,
            turn=turn,
            is_correct=ReviewLabelForm.DECISIONS[decision],
            expected_response=form.cleaned_data["expected_response"],
        )
    except TurnNotRateable as exc:
        messages.error(request, str(exc))
        return
    messages.success(request, f"Turn {turn.pk} labelled {decision}.")
