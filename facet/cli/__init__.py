"""Command-line entry points: ``facet-deploy`` (``facet.cli.deploy``) and ``facet-info``
(``facet.cli.info``); ``facet-train`` lives with the trainer (``facet.train.cli``). They parse
arguments and call the library; nothing else happens here."""
