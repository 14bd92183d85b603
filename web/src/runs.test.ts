import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { ProgressSchema, RunEventSchema, RunEventType, RunState } from "../../gen/ts/constellation/common/v1/common_pb";
import { foldSteps, queuePosition } from "./runs";

let sequence = 0n;
const event = (type: RunEventType, blockId: string, atMs: number, progress?: [number, number]) =>
  create(RunEventSchema, {
    sequence: ++sequence, type, blockId, state: RunState.RUNNING, time: timestampFromMs(atMs), message: `${RunEventType[type]} ${blockId}`,
    progress: progress && create(ProgressSchema, { unit: "tiles", done: BigInt(progress[0]), total: BigInt(progress[1]) }),
  });

describe("folding run events into steps", () => {
  it("tracks each step's state, progress and time, in the order steps first appear", () => {
    const steps = foldSteps([
      event(RunEventType.RUN_STARTED, "", 0),
      event(RunEventType.DEPLOYMENT, "infer", 10),
      event(RunEventType.STEP_STARTED, "scene", 1000),
      event(RunEventType.STEP_SUCCEEDED, "scene", 1500),
      event(RunEventType.STEP_STARTED, "infer", 2000),
      event(RunEventType.STEP_PROGRESS, "infer", 2100, [1, 4]),
      event(RunEventType.STEP_PROGRESS, "infer", 2200, [3, 4]),
    ]);
    expect([...steps.keys()]).toEqual(["infer", "scene"]);
    expect(steps.get("scene")).toMatchObject({ state: "succeeded", seconds: 0.5 });
    expect(steps.get("infer")).toMatchObject({ state: "running", done: 3, total: 4, unit: "tiles" });
    expect(steps.get("infer")!.seconds).toBeUndefined();
  });

  it("lists the pipeline's blocks in its order before any of them has an event", () => {
    const steps = foldSteps([event(RunEventType.DEPLOYMENT, "infer", 0)], ["scene", "tiles", "infer", "out"]);
    expect([...steps.keys()]).toEqual(["scene", "tiles", "infer", "out"]);
    expect([...steps.values()].map((s) => s.state)).toEqual(["waiting", "waiting", "deploying", "waiting"]);
  });

  it("shows a model step as deploying until it starts, and a finished step as complete", () => {
    expect(foldSteps([event(RunEventType.DEPLOYMENT, "infer", 0)]).get("infer")!.state).toBe("deploying");
    const finished = foldSteps([
      event(RunEventType.STEP_STARTED, "infer", 0),
      event(RunEventType.STEP_PROGRESS, "infer", 10, [2, 4]),
      event(RunEventType.STEP_RETRY, "infer", 20),
      event(RunEventType.STEP_SUCCEEDED, "infer", 3000),
    ]).get("infer")!;
    expect(finished).toMatchObject({ state: "succeeded", done: 4, total: 4, seconds: 3 });
  });
});

describe("a run's place in core's queue", () => {
  const queued = (position: number) =>
    create(RunEventSchema, { sequence: ++sequence, type: RunEventType.RUN_QUEUED, state: RunState.QUEUED, queuePosition: position });
  it("is the latest RUN_QUEUED event's position while the run is queued", () => {
    expect(queuePosition([queued(0)])).toBe(0);
    expect(queuePosition([queued(0), queued(3), queued(2)])).toBe(2);
  });
  it("is gone once the run has started", () => {
    const started = create(RunEventSchema, { sequence: ++sequence, type: RunEventType.LOG, state: RunState.STARTING });
    expect(queuePosition([queued(1), queued(0), started])).toBeNull();
    expect(queuePosition([])).toBeNull();
  });
});
