"""The quality report as a page in the admin (same numbers as GET /api/reports/feedback/)."""

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.template.response import TemplateResponse

from feedback import selectors

# The lifecycle's order, from the vote to a passing evaluation.
_STAGES = {
    stage: i
    for i, stage in enumerate(
        ["new", "in review", "not a problem", "corrected", "in dataset", "failing", "passing"]
    )
}


@staff_member_required
def feedback_report_page(request):
    group_by = request.GET.get("group_by", "app_version")
    if group_by not in selectors.REPORT_GROUPS:
        group_by = "app_version"
    rows = selectors.feedback_report(group_by=group_by)
    widest = max((row["turns"] for row in rows), default=0) or 1
    for row in rows:
        row["turns_pct"] = round(100 * row["turns"] / widest)
        row["positive_pct"] = round(100 * (row["positive_rate"] or 0))
        row["label_positive_pct"] = round(100 * (row["label_positive_rate"] or 0))
        row["feedback_pct"] = round(100 * row["feedback_rate"])
    context = {
        **admin.site.each_context(request),
        "title": "Feedback quality report",
        "rows": rows,
        "group_by": group_by,
        "groups": sorted(selectors.REPORT_GROUPS),
        "lifecycle": sorted(
            selectors.lifecycle_counts().items(), key=lambda kv: _STAGES.get(kv[0], 99)
        ),
    }
    return TemplateResponse(request, "admin/feedback/report.html", context)
