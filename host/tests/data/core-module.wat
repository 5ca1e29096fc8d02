;; A core WebAssembly module, not a component: the engine must refuse to load it.
(module
  (func (export "abi-version") (result i32) i32.const 0))
