import { defineConfig } from "vitest/config";

// The console is plain Preact + TSX (no plugin needed); it reads its generated client from ../gen/ts.
export default defineConfig({
  root: __dirname,
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", reportCompressedSize: false },
  test: { include: ["src/**/*.test.{ts,tsx}"], environment: "node" },
});
