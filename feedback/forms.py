from django import forms


class ExpectedResponseForm(forms.Form):
    """The intermediate page of the "Set expected response…" admin action."""

    _selected_action = forms.CharField(widget=forms.MultipleHiddenInput)
    action = forms.CharField(widget=forms.HiddenInput, initial="set_expected_response")
    expected_response = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 90}),
        max_length=20000,
        help_text="The correct answer; logged as the `expected_response` expectation on each "
        "selected turn's trace, with you as the source.",
    )

    def __init__(self, *args, selected=(), **kwargs):
        super().__init__(*args, **kwargs)
        if selected:
            self.initial["_selected_action"] = [str(pk) for pk in selected]
        self.initial.setdefault("action", "set_expected_response")
