# One-command install of StreamDiffusionV2 Studio on Windows (run from a checkout of the project):
#
#   powershell -ExecutionPolicy Bypass -File installer\install-windows.ps1           # NVIDIA -> CUDA torch, else CPU
#   powershell -ExecutionPolicy Bypass -File installer\install-windows.ps1 -Cpu      # force the CPU build
#   powershell -ExecutionPolicy Bypass -File installer\install-windows.ps1 -Cuda     # force the CUDA build
#
# What it does: finds Python 3.10-3.13 (the py launcher, then python.exe), makes a venv in
# %LOCALAPPDATA%\streamdiffusion-studio\venv, installs torch (CUDA wheel index chosen from the driver's CUDA version,
# or CPU), installs the app with the GUI, OBS and download extras, and creates Start Menu and Desktop shortcuts.
# Environment: SDV2_HOME (install folder), SDV2_TORCH_INDEX (override the torch wheel index).
# No admin rights needed. Nothing here needs flash-attn, TensorRT or a compiler.
param([switch]$Cpu, [switch]$Cuda)

$ErrorActionPreference = "Stop"
$Root = (Resolve-Path (Join-Path $PSScriptRoot "..")).Path
$HomeDir = if ($env:SDV2_HOME) { $env:SDV2_HOME } else { Join-Path $env:LOCALAPPDATA "streamdiffusion-studio" }
$Venv = Join-Path $HomeDir "venv"
$VenvPy = Join-Path $Venv "Scripts\python.exe"

function Say($msg) { Write-Host "[sdv2] $msg" -ForegroundColor Magenta }
function Die($msg) { Write-Host "[sdv2] error: $msg" -ForegroundColor Red; exit 1 }

# 1. Python 3.10-3.13
function Find-Python {
    $check = "import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))"
    foreach ($v in @("3.12", "3.11", "3.13", "3.10")) {
        if (Get-Command py -ErrorAction SilentlyContinue) {
            & py "-$v" -c $check 2>$null
            if ($LASTEXITCODE -eq 0) { return @("py", "-$v") }
        }
    }
    if (Get-Command python -ErrorAction SilentlyContinue) {
        & python -c $check 2>$null
        if ($LASTEXITCODE -eq 0) { return @("python") }
    }
    return $null
}
$Py = Find-Python
if (-not $Py) { Die "Python 3.10-3.13 is needed: install it from https://www.python.org/downloads/ (tick 'Add python.exe to PATH')" }
$PyExe = $Py[0]
$PyArgs = @($Py | Select-Object -Skip 1)

# 2. venv
if (-not (Test-Path $VenvPy)) {
    Say "creating $Venv"
    New-Item -ItemType Directory -Force -Path $HomeDir | Out-Null
    & $PyExe @PyArgs -m venv $Venv
    if ($LASTEXITCODE -ne 0) { Die "could not create the venv in $Venv" }
}
function Pip { & $VenvPy -m pip --disable-pip-version-check @args; if ($LASTEXITCODE -ne 0) { Die "pip $args failed" } }
Pip install -q --upgrade pip

# 3. torch: CUDA wheel where an NVIDIA GPU exists, CPU otherwise
$flavour = if ($Cpu) { "cpu" } elseif ($Cuda) { "cuda" } else { "" }
$smi = Get-Command nvidia-smi -ErrorAction SilentlyContinue
if (-not $flavour) {
    $flavour = "cpu"
    if ($smi) { & nvidia-smi -L *> $null; if ($LASTEXITCODE -eq 0) { $flavour = "cuda" } }
}
if ($flavour -eq "cuda") {
    $index = $env:SDV2_TORCH_INDEX
    if (-not $index) {
        $text = (& nvidia-smi) -join "`n"
        $m = [regex]::Match($text, "CUDA Version:\s*(\d+)\.(\d+)")
        $ver = if ($m.Success) { [int]$m.Groups[1].Value * 10 + [int]$m.Groups[2].Value } else { 0 }
        if ($ver -ge 128) { $index = "https://download.pytorch.org/whl/cu128" }
        elseif ($ver -ge 126) { $index = "https://download.pytorch.org/whl/cu126" }
        else { Die "the NVIDIA driver is too old for current torch builds (needs CUDA 12.6+): update it from nvidia.com, or run with -Cpu" }
    }
    & nvidia-smi -L
    Say "installing torch (CUDA) from $index"
    Pip install -q "torch>=2.4,<2.15" --index-url $index
} else {
    Say "no NVIDIA GPU found: installing the CPU build of torch (the tiny demo model runs; the real model needs a GPU)"
    Pip install -q "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
}

# 4. the app
Say "installing StreamDiffusionV2 Studio from $Root"
Pip install -q "$Root[gui,obs]"

# 5. shortcuts (Start Menu + Desktop), with a generated icon
$Exe = Join-Path $Venv "Scripts\sdv2-studio.exe"
$IconPng = Join-Path $HomeDir "icon.png"
$env:QT_QPA_PLATFORM = "offscreen"
& $VenvPy -m sdv2_studio.app.icon $IconPng 256 | Out-Null
Remove-Item Env:\QT_QPA_PLATFORM
$IconIco = Join-Path $HomeDir "icon.ico"
try {
    # a PNG-compressed .ico (Vista+): 6-byte header, one 16-byte directory entry, then the PNG bytes
    $png = [IO.File]::ReadAllBytes($IconPng)
    $ms = New-Object IO.MemoryStream
    $bw = New-Object IO.BinaryWriter($ms)
    $bw.Write([UInt16]0); $bw.Write([UInt16]1); $bw.Write([UInt16]1)
    $bw.Write([Byte]0); $bw.Write([Byte]0); $bw.Write([Byte]0); $bw.Write([Byte]0)
    $bw.Write([UInt16]1); $bw.Write([UInt16]32); $bw.Write([UInt32]$png.Length); $bw.Write([UInt32]22)
    $bw.Write($png); $bw.Flush()
    [IO.File]::WriteAllBytes($IconIco, $ms.ToArray())
} catch { $IconIco = $Exe }
$shell = New-Object -ComObject WScript.Shell
foreach ($dir in @([Environment]::GetFolderPath("Programs"), [Environment]::GetFolderPath("Desktop"))) {
    $lnk = $shell.CreateShortcut((Join-Path $dir "StreamDiffusionV2 Studio.lnk"))
    $lnk.TargetPath = $Exe
    $lnk.WorkingDirectory = $HomeDir
    $lnk.IconLocation = $IconIco
    $lnk.Description = "Live AI video styles for your camera and OBS"
    $lnk.WindowStyle = 7  # minimised console; the app window opens normally
    $lnk.Save()
}

# 6. what is left to do
Say "checking this machine (sdv2 doctor):"
& (Join-Path $Venv "Scripts\sdv2.exe") doctor
Say "done: start 'StreamDiffusionV2 Studio' from the Start Menu or the Desktop"
