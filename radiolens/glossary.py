"""What each PyRadiomics feature measures, in plain language: the one glossary.

The report's explorer, the kernel-backed widgets and the book all show these definitions;
:func:`feature_definition` explains a radiomic column name, e.g.
``feature_definition("ADC__original_glcm_Imc2")``.
"""

from __future__ import annotations

from radiolens.naming import FAMILY_LABELS, parse_column

__all__ = ["FAMILY_DEFINITIONS", "FEATURE_DEFINITIONS", "feature_definition", "image_type_definition"]

# The definitions are written for radiolens in plain language after the PyRadiomics
# documentation (https://pyradiomics.readthedocs.io/en/latest/features.html) and the Image
# Biomarker Standardisation Initiative's naming (IBSI, Zwanenburg et al., Radiology 2020).
# Texture matrices are computed on the ROI after grey-level discretisation (PyRadiomics
# default: bins of width 25), so "grey level" below means a bin, not a raw intensity.

#: What each PyRadiomics feature class looks at.
FAMILY_DEFINITIONS: dict[str, str] = {
    "firstorder": (
        "First-order statistics describe the histogram of voxel intensities inside the ROI, "
        "ignoring where the voxels are."
    ),
    "glcm": (
        "The grey level co-occurrence matrix (GLCM) counts how often a voxel with grey level i "
        "sits next to one with grey level j (distance 1, all 13 3-D directions, symmetric, "
        "features averaged over directions); its features describe pairwise texture."
    ),
    "gldm": (
        "The grey level dependence matrix (GLDM) counts, for each voxel, how many of its 26 "
        "neighbours have (nearly) the same grey level - its 'dependence' - and tabulates "
        "grey level against dependence count."
    ),
    "glrlm": (
        "The grey level run length matrix (GLRLM) counts runs: straight lines of consecutive "
        "voxels with the same grey level, by grey level and run length, along 13 directions "
        "(features averaged over directions)."
    ),
    "glszm": (
        "The grey level size zone matrix (GLSZM) counts zones: connected groups of voxels "
        "(26-connectivity) sharing one grey level, by grey level and zone size in voxels; it "
        "does not depend on direction."
    ),
    "ngtdm": (
        "The neighbouring grey tone difference matrix (NGTDM) sums, per grey level, how much "
        "each voxel differs from the average of its neighbours; its features describe how "
        "fast and how strongly intensity changes in space."
    ),
}


def _first_order() -> dict[str, str]:
    return {
        "10Percentile": "The intensity below which 10 % of the ROI's voxels lie.",
        "90Percentile": "The intensity below which 90 % of the ROI's voxels lie.",
        "Energy": (
            "The sum of squared voxel intensities in the ROI (after an optional shift); "
            "larger for brighter and for bigger regions."
        ),
        "TotalEnergy": "Energy multiplied by the voxel volume, so expressed per mm³ of tissue.",
        "Entropy": (
            "Shannon entropy of the binned intensity histogram: how unpredictable the "
            "intensity of a random voxel is; high when many grey levels are equally common."
        ),
        "Uniformity": (
            "Sum of the squared histogram probabilities: high when a few grey levels dominate "
            "(a homogeneous region), the opposite of entropy."
        ),
        "InterquartileRange": "75th minus 25th intensity percentile: the spread of the middle half.",
        "Kurtosis": (
            "Fourth standardised moment of the intensities: how heavy the tails of the "
            "histogram are compared with its shoulders (PyRadiomics does not subtract 3)."
        ),
        "Skewness": (
            "Third standardised moment: asymmetry of the histogram (positive when a tail of "
            "bright voxels stretches to the right)."
        ),
        "Maximum": "The highest voxel intensity in the ROI.",
        "Minimum": "The lowest voxel intensity in the ROI.",
        "Mean": "The average voxel intensity in the ROI.",
        "Median": "The median voxel intensity in the ROI.",
        "Range": "Maximum minus minimum intensity.",
        "MeanAbsoluteDeviation": "The average absolute distance of voxel intensities from their mean.",
        "RobustMeanAbsoluteDeviation": (
            "Mean absolute deviation computed only over voxels between the 10th and 90th "
            "percentile, so insensitive to outliers."
        ),
        "RootMeanSquared": "Square root of the mean squared intensity (after the optional shift).",
        "Variance": "The mean squared distance of voxel intensities from their mean.",
        "StandardDeviation": (
            "Square root of the variance (deprecated in PyRadiomics because it duplicates "
            "Variance; disabled by default)."
        ),
    }


def _glcm() -> dict[str, str]:
    return {
        "Autocorrelation": (
            "Average of the product i·j of paired grey levels: large when bright voxels sit "
            "next to bright voxels."
        ),
        "JointAverage": "Mean grey level of the first voxel of a pair under the GLCM.",
        "ClusterProminence": (
            "Fourth moment of (i + j) about its mean: large when the sums of paired grey "
            "levels have a heavy tail, i.e. an asymmetric, peaky GLCM."
        ),
        "ClusterShade": "Third moment of (i + j) about its mean: skewness of the GLCM.",
        "ClusterTendency": (
            "Second moment of (i + j) about its mean: how much neighbouring pairs cluster at "
            "similar grey levels that differ from the average."
        ),
        "Contrast": (
            "Average squared grey-level difference (i - j)² between neighbours: local "
            "intensity variation, high for sharp, busy texture."
        ),
        "Correlation": (
            "Linear correlation between the grey levels of neighbouring voxels (-1 to 1): how "
            "predictable a voxel is from its neighbour."
        ),
        "DifferenceAverage": "Mean of the distribution of absolute neighbour differences |i - j|.",
        "DifferenceEntropy": (
            "Entropy of the distribution of |i - j|: how varied the neighbour differences are."
        ),
        "DifferenceVariance": "Variance of the distribution of |i - j|.",
        "Dissimilarity": "Same as DifferenceAverage (deprecated name in PyRadiomics).",
        "Id": (
            "Inverse difference: pairs weighted by 1 / (1 + |i - j|), so high when neighbours "
            "have similar grey levels (local homogeneity)."
        ),
        "Homogeneity1": "Same as Id (deprecated name in PyRadiomics).",
        "Idn": "Inverse difference with |i - j| divided by the number of grey levels first.",
        "Idm": (
            "Inverse difference moment: pairs weighted by 1 / (1 + (i - j)²); like Id but "
            "penalising large differences more."
        ),
        "Homogeneity2": "Same as Idm (deprecated name in PyRadiomics).",
        "Idmn": "Inverse difference moment with (i - j)² divided by the squared number of grey levels.",
        "Imc1": (
            "Informational measure of correlation 1: how much knowing one voxel's grey level "
            "reduces the uncertainty about its neighbour's, relative to the single-voxel "
            "entropy (0 = independent, more negative = more dependent)."
        ),
        "Imc2": (
            "Informational measure of correlation 2: a 0-to-1 transform of the mutual "
            "information between neighbouring grey levels (0 = independent)."
        ),
        "InverseVariance": "Sum of the GLCM weighted by 1 / (i - j)² over pairs with i ≠ j.",
        "JointEnergy": (
            "Sum of squared GLCM entries (angular second moment): high when few pair types "
            "dominate, i.e. an orderly texture."
        ),
        "JointEntropy": "Entropy of the GLCM: randomness of neighbouring grey-level pairs.",
        "MCC": (
            "Maximal correlation coefficient: square root of the second-largest eigenvalue of a "
            "matrix built from the GLCM; a measure of how complex the pairwise dependence is."
        ),
        "MaximumProbability": "The largest GLCM entry: share of the most frequent neighbour pair.",
        "SumAverage": "Mean of the distribution of grey-level sums i + j of neighbours.",
        "SumEntropy": "Entropy of the distribution of i + j.",
        "SumSquares": "Variance of grey levels around the joint average, weighted by the GLCM.",
        "SumVariance": "Same as ClusterTendency (deprecated name in PyRadiomics).",
    }


def _size_texture(units: str, size: str, small: str, large: str, small_word: str,
                  large_word: str, low_gl: str, high_gl: str) -> dict[str, str]:
    """Definitions shared by GLRLM, GLSZM and GLDM, which all tabulate grey level vs a size."""
    return {
        f"{small}Emphasis": (
            f"Average of 1 / {size}² over all {units}: high when {small_word} {units} "
            "dominate, i.e. a fine, heterogeneous texture."
        ),
        f"{large}Emphasis": (
            f"Average of {size}² over all {units}: high when {large_word} {units} dominate, "
            "i.e. a coarse, homogeneous texture."
        ),
        low_gl: f"Average of 1 / (grey level)² over all {units}: high when dark {units} dominate.",
        high_gl: f"Average of (grey level)² over all {units}: high when bright {units} dominate.",
        f"{small}LowGrayLevelEmphasis": (
            f"Like {small}Emphasis, weighted towards dark {units}: high for {small_word} dark "
            f"{units}."
        ),
        f"{small}HighGrayLevelEmphasis": (
            f"Like {small}Emphasis, weighted towards bright {units}: high for {small_word} "
            f"bright {units}."
        ),
        f"{large}LowGrayLevelEmphasis": (
            f"Like {large}Emphasis, weighted towards dark {units}: high for {large_word} dark "
            f"{units}."
        ),
        f"{large}HighGrayLevelEmphasis": (
            f"Like {large}Emphasis, weighted towards bright {units}: high for {large_word} "
            f"bright {units}."
        ),
        "GrayLevelNonUniformity": (
            f"Sum over grey levels of the squared number of {units}, divided by the number of "
            f"{units}: large when {units} concentrate on few grey levels; grows with ROI size."
        ),
        "GrayLevelNonUniformityNormalized": (
            f"GrayLevelNonUniformity divided again by the number of {units}: a size-independent "
            f"version between 1/N_g and 1."
        ),
        "GrayLevelVariance": f"Variance of the grey levels of the {units}.",
    }


def _glrlm() -> dict[str, str]:
    defs = _size_texture("runs", "run length", "ShortRun", "LongRun", "short", "long",
                         "LowGrayLevelRunEmphasis", "HighGrayLevelRunEmphasis")
    defs.update({
        "RunLengthNonUniformity": (
            "Sum over run lengths of the squared number of runs, divided by the number of runs: "
            "large when runs concentrate on few lengths; grows with ROI size."
        ),
        "RunLengthNonUniformityNormalized": (
            "RunLengthNonUniformity divided again by the number of runs (size-independent)."
        ),
        "RunPercentage": (
            "Number of runs divided by the number of voxels: near 1 when almost every run is a "
            "single voxel (fine texture), low for long homogeneous runs."
        ),
        "RunEntropy": "Entropy of the joint distribution of grey level and run length.",
        "RunVariance": "Variance of the run lengths.",
    })
    return defs


def _glszm() -> dict[str, str]:
    defs = _size_texture("zones", "zone size", "SmallArea", "LargeArea", "small", "large",
                         "LowGrayLevelZoneEmphasis", "HighGrayLevelZoneEmphasis")
    defs.update({
        "SizeZoneNonUniformity": (
            "Sum over zone sizes of the squared number of zones, divided by the number of "
            "zones: large when zones concentrate on few sizes; grows with ROI size."
        ),
        "SizeZoneNonUniformityNormalized": (
            "SizeZoneNonUniformity divided again by the number of zones (size-independent)."
        ),
        "ZonePercentage": (
            "Number of zones divided by the number of voxels: near 1 for a fine, speckled "
            "texture, low when a few large zones fill the ROI."
        ),
        "ZoneEntropy": "Entropy of the joint distribution of grey level and zone size.",
        "ZoneVariance": "Variance of the zone sizes.",
    })
    return defs


def _gldm() -> dict[str, str]:
    defs = _size_texture("voxels", "dependence count", "SmallDependence", "LargeDependence",
                         "weakly dependent (few similar neighbours)",
                         "strongly dependent (many similar neighbours)", "LowGrayLevelEmphasis",
                         "HighGrayLevelEmphasis")
    defs.update({
        "DependenceNonUniformity": (
            "Sum over dependence counts of the squared number of voxels, divided by the number "
            "of voxels: large when voxels concentrate on few dependence counts; grows with ROI "
            "size."
        ),
        "DependenceNonUniformityNormalized": (
            "DependenceNonUniformity divided again by the number of voxels (size-independent)."
        ),
        "DependencePercentage": (
            "Dependences per voxel; always 1 in PyRadiomics' definition (deprecated, disabled "
            "by default)."
        ),
        "DependenceEntropy": "Entropy of the joint distribution of grey level and dependence count.",
        "DependenceVariance": "Variance of the dependence counts.",
        "GrayLevelNonUniformityNormalized": (
            "GrayLevelNonUniformity divided again by the number of voxels (deprecated in "
            "PyRadiomics' GLDM because it equals first-order Uniformity)."
        ),
    })
    return defs


def _ngtdm() -> dict[str, str]:
    return {
        "Coarseness": (
            "Inverse of the average difference between voxels and their neighbourhood mean: "
            "high when intensity changes slowly in space (large uniform patches)."
        ),
        "Contrast": (
            "Combines the spread of grey levels with how much voxels differ from their "
            "neighbourhood: high when there are many grey levels and sharp local changes."
        ),
        "Busyness": (
            "Ratio of neighbourhood differences to the differences between grey levels: high "
            "when intensity changes rapidly from voxel to voxel."
        ),
        "Complexity": (
            "High when the region has many small, distinct structures with sharp edges "
            "(rapid, non-uniform changes of grey level)."
        ),
        "Strength": (
            "High when the texture's building blocks are large, clearly distinct areas whose "
            "grey levels differ a lot from each other."
        ),
    }


#: Plain-language definition of each feature: family -> feature name -> text.
FEATURE_DEFINITIONS: dict[str, dict[str, str]] = {
    "firstorder": _first_order(),
    "glcm": _glcm(),
    "gldm": _gldm(),
    "glrlm": _glrlm(),
    "glszm": _glszm(),
    "ngtdm": _ngtdm(),
}

_MODALITY_WORDS = {
    "T2W": "T2-weighted image",
    "DWI": "high-b-value diffusion-weighted image",
    "ADC": "apparent diffusion coefficient (ADC) map",
}
_AXES = "xyz"


def image_type_definition(image_type: str) -> str:
    """Explain a PyRadiomics image type token, e.g. ``"original"`` or ``"wavelet-LHL"``.

    PyRadiomics' wavelet filter is a one-level undecimated (stationary) wavelet transform
    (``coif1`` by default). Each letter of ``wavelet-XYZ`` says which band is kept along the
    x, y and z axis in that order: ``L`` = low-pass (smooth, coarse structure), ``H`` =
    high-pass (edges, fine detail). ``wavelet-LLL`` is the smoothed approximation.
    """
    token = image_type
    if token.lower() == "original":
        return "Original: computed on the image itself, without a filter."
    if token.lower().startswith("wavelet"):
        bands = token.split("-", 1)[1] if "-" in token else ""
        if len(bands) in (2, 3) and set(bands) <= {"L", "H"}:
            parts = [
                f"{'low' if b == 'L' else 'high'}-pass along {axis}"
                for b, axis in zip(bands, _AXES)
            ]
            return (
                f"Wavelet {bands}: computed on a wavelet-filtered image ("
                + ", ".join(parts)
                + "); low-pass keeps smooth, coarse structure, high-pass keeps edges and fine "
                "detail."
            )
        return "Wavelet: computed on a wavelet-filtered image."
    if token.lower().startswith("log-sigma"):
        return f"{token}: computed after a Laplacian-of-Gaussian filter (blob/edge enhancing)."
    return f"{token}: computed on a filtered version of the image."


def feature_definition(column: str) -> str:
    """A short plain-language definition of a PyRadiomics feature from its name.

    Parameters
    ----------
    column
        A radiolens column (``"T2W__original_glcm_MCC"``), a PyRadiomics key
        (``"wavelet-LHL_firstorder_Kurtosis"``) or ``"family_feature"`` (``"glcm_MCC"``).

    Returns
    -------
    str
        ``"<family> <feature>: <what it measures> <image type>. <modality>."``, e.g.
        for ``"ADC__original_glcm_Imc2"``.

    Raises
    ------
    ValueError
        Naming the column, when it cannot be parsed or names a feature radiolens has no
        definition for.
    """
    modality = None
    image_type = None
    if "__" in column:
        modality = column.split("__", 1)[0]
        name = parse_column(column, modalities=[modality])
        family, feature, image_type = name.family, name.feature, name.filter
    else:
        parts = column.split("_")
        if len(parts) == 2:
            family, feature = parts
        else:
            name = parse_column(f"X__{column}", modalities=["X"])
            family, feature, image_type = name.family, name.feature, name.filter
    if family not in FEATURE_DEFINITIONS:
        raise ValueError(
            f"radiomic column {column!r}: no definitions for feature class {family!r}; radiolens "
            f"defines the classes {list(FEATURE_DEFINITIONS)}"
        )
    text = FEATURE_DEFINITIONS[family].get(feature)
    if text is None:
        raise ValueError(
            f"radiomic column {column!r}: {FAMILY_LABELS.get(family, family)} has no feature "
            f"{feature!r}"
        )
    out = f"{FAMILY_LABELS.get(family, family)} {feature}: {text}"
    if image_type is not None:
        out += f" {image_type_definition(image_type)}"
    if modality is not None:
        out += f" Measured on the {_MODALITY_WORDS.get(modality, modality)}."
    return out
