"""TRAK Explorer: demo data, models and training around the ``trak_engine`` package."""
