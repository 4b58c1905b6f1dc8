"""Facts about chemical elements and countries, read from packages that carry them.

- elements (the forget domain), from `periodictable`: symbol, atomic number, name from symbol,
  atomic mass rounded to a whole number;
- countries (the retain domain), from `countryinfo` (capital, region, currency and language
  codes) with `pycountry` turning codes into names.

Each entity is `{"name", "facts": {attribute: value}}` (elements also carry their "symbol", which
the name-from-symbol questions show), every value a string as it is written in text. Only countries of at least a million people are taken: the rest are territories and
micro-states a small model has rarely read about.
"""

from __future__ import annotations

from peel.errors import PeelError

MIN_POPULATION = 1_000_000
# countryinfo's region "Americas" is split into the continents people name: its intermediate region
# "South America" is South America, every other part (Caribbean, Central America) North America.


def require(module: str):
    """Import a data package, or say how to install the scenario's packages."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PeelError(f"the elements scenario's facts need {module}: pip install 'peel[elements]'") from None


def elements() -> list[dict]:
    """Every element from hydrogen to oganesson, in atomic-number order."""
    periodictable = require("periodictable")
    entities = []
    for element in periodictable.elements:
        if element.number < 1:  # periodictable lists the neutron as element 0
            continue
        name = element.name.capitalize()
        entities.append({"name": name, "symbol": element.symbol, "facts": {
            "symbol": element.symbol,
            "number": str(element.number),
            "name_from_symbol": name.lower(),
            "mass": str(round(element.mass)),
        }})
    return entities


def countries() -> list[dict]:
    """Countries with a capital, a continent, a currency and a language, by name."""
    countryinfo = require("countryinfo")
    pycountry = require("pycountry")
    entities = []
    for country in countryinfo.all_countries():
        info = country.info()
        if not info.get("capital") or (info.get("population") or 0) < MIN_POPULATION:
            continue
        if not info.get("currencies") or not info.get("languages") or not info.get("region"):
            continue
        currency = pycountry.currencies.get(alpha_3=info["currencies"][0])
        language = pycountry.languages.get(alpha_2=info["languages"][0]) or pycountry.languages.get(alpha_3=info["languages"][0])
        if currency is None or language is None:
            continue
        region = info["region"]
        if region == "Americas":
            region = "South America" if info.get("intermediateregion") == "South America" else "North America"
        entities.append({"name": info["name"], "facts": {
            "capital": info["capital"],
            "continent": region,
            "currency": currency.name,
            "language": language.name,
        }})
    return sorted(entities, key=lambda entity: entity["name"])
