# The report: tables and figures of the current params' runs only (popos.report.inputs.required_inputs).

from popos.report import required_inputs


rule report:
    input:
        required_inputs(P, R),
        code=code("report"),
    output:
        directory(R.report_dir),
    params:
        results=R.root,
        knobs=knobs("report", "grid", "sweeps", "decode.methods", "evaluate.fr_threshold", "bench.devices"),
    log:
        R.root / "logs" / "report.log",
    benchmark:
        R.root / "benchmarks" / "report.tsv"
    shell:
        "popos report {PARAMS_ARGS} --results {params.results} --out {output} > {log} 2>&1"
