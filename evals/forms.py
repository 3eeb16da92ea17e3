from django import forms
from django.conf import settings


class AddToDatasetForm(forms.Form):
    """The intermediate page of the "Add to dataset…" action on turns."""

    _selected_action = forms.CharField(widget=forms.MultipleHiddenInput)
    action = forms.CharField(widget=forms.HiddenInput, initial="add_to_dataset")
    dataset = forms.SlugField(
        max_length=100,
        help_text="The dataset's name (made if it does not exist yet).",
    )
    freeze = forms.BooleanField(
        required=False,
        initial=True,
        label="Freeze the next version now",
        help_text="Turns with a staff correction go into it; the others stay staged.",
    )

    def __init__(self, *args, selected=(), **kwargs):
        super().__init__(*args, **kwargs)
        if selected:
            self.initial["_selected_action"] = [str(pk) for pk in selected]
        self.initial.setdefault("dataset", settings.EVAL_DATASET_NAME)
