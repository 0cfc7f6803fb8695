# Build the Windows x64 bundle (CUDA) and a .zip. UNTESTED: written on Linux, never run on Windows
# (see README "Install the app").
#
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1
#
# Needs: Python 3.11 x64 (python.org), Visual Studio 2022 Build Tools (C++), CMake, the CUDA Toolkit
# 12.x (CUDA_PATH set by its installer), and for signing the Windows SDK's signtool.exe.
# Environment:
#   TORCH_INDEX     PyTorch's index for the CUDA build (default https://download.pytorch.org/whl/cu126)
#   DCP_CUDA=0      build the CPU-only bundle (torch from PyTorch's CPU index, no ggml-cuda)
#   SIGN_CERT_SHA1  thumbprint of a code-signing certificate in the store: sign every binary
#   SIGN_TIMESTAMP  RFC 3161 timestamp server (default http://timestamp.digicert.com)
# Outputs (git-ignored): packaging\dist\dcp-desktop\, packaging\dist\dcp-desktop-<v>-windows-x64.zip
$ErrorActionPreference = "Stop"
$Root = (Resolve-Path "$PSScriptRoot\..\..").Path
Set-Location $Root
$Build = "$Root\packaging\build"; $Dist = "$Root\packaging\dist"; $Venv = "$Build\venv-windows"
$Version = (Select-String -Path pyproject.toml -Pattern '^version = "(.*)"').Matches[0].Groups[1].Value
$Cuda = $env:DCP_CUDA -ne "0"
$TorchIndex = if ($env:TORCH_INDEX) { $env:TORCH_INDEX } elseif ($Cuda) { "https://download.pytorch.org/whl/cu126" } else { "https://download.pytorch.org/whl/cpu" }
$TorchVersion = (Select-String -Path packaging\constraints.txt -Pattern '^torch==(.*)').Matches[0].Groups[1].Value
New-Item -ItemType Directory -Force $Build, $Dist | Out-Null
function Check($what) { if ($LASTEXITCODE -ne 0) { throw "$what failed ($LASTEXITCODE)" } }

# 1. A clean venv. torch from PyTorch's own index, the CUDA (or CPU) build asked for by name:
#    PyPI's Windows torch is the CPU build, and a mismatched CUDA build is several GB for nothing.
if (-not (Test-Path "$Venv\Scripts\python.exe")) { py -3.11 -m venv $Venv; Check "venv" }
$Pip = "$Venv\Scripts\pip.exe"
$Flavour = if ($Cuda) { "cu126" } else { "cpu" }
& $Pip install --quiet --index-url $TorchIndex "torch==$TorchVersion+$Flavour"; Check "torch"
$env:CMAKE_ARGS = "-DLLAMA_BUILD=OFF"
& $Pip install --quiet -c packaging\constraints.txt llama-cpp-python pyinstaller==6.22.3 "scikit-build-core>=0.10" "nanobind>=2.4"
Check "build tools"

# 2. Our wheel: llama.cpp's DLLs (CPU variants, and ggml-cuda with DCP_CUDA) and the pruning module.
$env:CMAKE_ARGS = if ($Cuda) { "-DGGML_CUDA=ON" } else { "" }
Remove-Item -Recurse -Force "$Build\wheel-windows" -ErrorAction SilentlyContinue
& $Pip wheel --no-deps --no-build-isolation -w "$Build\wheel-windows" --config-settings=build-dir="$Build\cmake-windows" .
Check "our wheel"
$Wheel = (Get-ChildItem "$Build\wheel-windows\dcp_desktop-*.whl").FullName
& $Pip install --quiet --force-reinstall --no-deps $Wheel; & $Pip install --quiet -c packaging\constraints.txt $Wheel
Check "installing our wheel"
& "$Venv\Scripts\python.exe" -c "from dcp_desktop import llama_build as b; print(b.build_info()['backends'])"
Check "loading llama.cpp from the venv"

# 3. Icon and bundle.
& "$Venv\Scripts\python.exe" -c "from PIL import Image; Image.open(r'packaging\icon\dcp-desktop-512.png').save(r'$Build\dcp-desktop.ico', sizes=[(16,16),(32,32),(48,48),(256,256)])"
Check "icon"
Remove-Item -Recurse -Force "$Dist\dcp-desktop" -ErrorAction SilentlyContinue
$env:DCP_CUDA = if ($Cuda) { "1" } else { "0" }
& "$Venv\Scripts\pyinstaller.exe" --noconfirm --log-level WARN --workpath "$Build\pyinstaller-windows" --distpath $Dist packaging\windows\dcp-desktop-windows.spec
Check "PyInstaller"

# 4. Signing: every executable file, not only the two .exe (SmartScreen and some antivirus judge each DLL).
if ($env:SIGN_CERT_SHA1) {
  $Ts = if ($env:SIGN_TIMESTAMP) { $env:SIGN_TIMESTAMP } else { "http://timestamp.digicert.com" }
  Get-ChildItem -Recurse "$Dist\dcp-desktop" -Include *.exe, *.dll, *.pyd | ForEach-Object {
    if ((Get-AuthenticodeSignature $_.FullName).Status -ne "Valid") {
      signtool sign /sha1 $env:SIGN_CERT_SHA1 /fd SHA256 /tr $Ts /td SHA256 $_.FullName; Check "signing $($_.Name)"
    }
  }
} else { Write-Warning "SIGN_CERT_SHA1 unset: the bundle is unsigned (SmartScreen warns on first start)" }

# 5. The zip, and a quick check (the Linux smoke test's first part, by hand here).
$Zip = "$Dist\dcp-desktop-$Version-windows-x64.zip"
Remove-Item -Force $Zip -ErrorAction SilentlyContinue
Compress-Archive -Path "$Dist\dcp-desktop" -DestinationPath $Zip
& "$Venv\Scripts\python.exe" -m dcp_desktop.scenes --split test --n 1 --out "$Build\scenes" | Out-Null
& "$Dist\dcp-desktop\dcp-chat.exe" "$Build\scenes\2000000000000000.png" "What colour is the hexagon?" --model demo
Check "dcp-chat from the bundle"
