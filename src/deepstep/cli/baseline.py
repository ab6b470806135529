"""deepstep baseline: the classical forecasts (naive, seasonal naive, ARIMA / SARIMA) on the same
spans and origins a `deepstep train` run with these options is measured on."""

from __future__ import annotations

import argparse

from deepstep.cli.common import formatter, print_json
from deepstep.cli.evaluate import add_forecast_options, print_forecast_table

EXAMPLES = """\
examples:
  deepstep baseline --data airline-passengers.csv --target Passengers --horizon 12 --test-size 24
  deepstep baseline --data monthly-sunspots.csv --season 0 --test-size 0.2 --backtest --json
  deepstep baseline --data nile --order 1,1,1

The ARIMA / SARIMA orders are the lowest AIC over a small grid, fitted on the data before the
test span (give --order / --seasonal-order to fix them); the season comes from the frequency
(12 for monthly data) unless --season says otherwise.
"""

SHARED = ("data", "target", "features", "time", "fill", "lookback", "horizon", "test_size", "val_size", "season")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from deepstep.cli.train import OPTIONS

    parser = subparsers.add_parser(
        "baseline",
        help="naive, seasonal naive and (S)ARIMA forecasts on a series' test span",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    for flag, kwargs in OPTIONS:
        if flag.replace("-", "_") in SHARED:
            if flag == "data":
                kwargs = {**kwargs, "help": "a CSV file, or a built-in series (see `deepstep datasets`)"}
            parser.add_argument(f"--{flag}", default=argparse.SUPPRESS, **kwargs)
    parser.add_argument("--split", default="test", choices=("test", "val"), help="default test")
    add_forecast_options(parser, default=True)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from deepstep.config import resolve_config
    from deepstep.tasks.forecasting import baseline_report

    given = {k: v for k, v in vars(args).items() if k in SHARED}
    config = resolve_config({}, given, task="forecasting")
    result = baseline_report(
        config,
        split=args.split,
        backtest=args.backtest,
        baselines=args.baselines,
        order=args.order,
        seasonal_order=args.seasonal_order,
    )
    if args.json:
        print_json(result)
        return 0
    for line in result["data_notes"]:
        print(line)
    print(
        f"{result['split']}: {result['origins']} forecast(s) of {result['horizon']} step(s) of {result['target']} from "
        f"{result['first_origin']}"
        + (" (rolling origin)" if result["backtest"] else "")
        + f"; season {result['season'] or 'none'}"
    )
    print_forecast_table(result["baselines"], result["baseline_notes"], result["metric_notes"])
    return 0
