from django import forms

from feedback import selectors


class ExpectedResponseForm(forms.Form):
    """The intermediate page of the "Set expected response…" admin action."""

    _selected_action = forms.CharField(widget=forms.MultipleHiddenInput)
    action = forms.CharField(widget=forms.HiddenInput, initial="set_expected_response")
    expected_response = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 90}),
        max_length=20000,
        help_text="The correct answer; logged as the expected_response expectation on each "
        "selected turn's trace, with you as the source.",
    )

    def __init__(self, *args, selected=(), **kwargs):
        super().__init__(*args, **kwargs)
        if selected:
            self.initial["_selected_action"] = [str(pk) for pk in selected]
        self.initial.setdefault("action", "set_expected_response")


class ReviewFilterForm(forms.Form):
    """Which turns the review queue shows, and in which order (a GET form)."""

    signal = forms.ChoiceField(
        label="Turns", choices=selectors.REVIEW_SIGNALS.items(), initial="disliked", required=False
    )
    unlabelled = forms.BooleanField(label="Only unlabelled", initial=True, required=False)
    app_version = forms.CharField(label="App version", max_length=64, required=False)
    environment = forms.CharField(max_length=64, required=False)
    since = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Since"
    )
    order = forms.ChoiceField(choices=selectors.REVIEW_ORDERS.items(), required=False)

    def filters(self) -> selectors.ReviewFilter:
        """The form's filters, the defaults when it was not sent or is invalid."""
        if not self.is_bound or not self.is_valid():
            return selectors.ReviewFilter()
        data = self.cleaned_data
        return selectors.ReviewFilter(
            signal=data["signal"] or "disliked",
            unlabelled=data["unlabelled"],
            app_version=data["app_version"],
            environment=data["environment"],
            since=data["since"],
            order=data["order"] or "newest",
        )


class ReviewLabelForm(forms.Form):
    """One decision on the turn the queue shows."""

    DECISIONS = {"correct": True, "incorrect": False, "skip": None}

    turn = forms.IntegerField(widget=forms.HiddenInput)
    decision = forms.ChoiceField(choices=[(d, d) for d in DECISIONS])
    expected_response = forms.CharField(
        label="Expected response (optional)",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "The answer it should have given"}),
        max_length=20000,
        required=False,
    )
